"""Scaling-law sweeps (python -m clipjax.sweep): run specs, failures, locks and stops, the emitted cluster
scripts, and `fit` on runs' summaries (a whole sweep killed, resumed and fitted: tests/test_paper_miniature.py)."""

import fcntl
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from clipjax.config import ConfigError
from clipjax.sweep import study
from clipjax.sweep.emit import emit
from clipjax.sweep.runs import Busy, StopRequests, clipjax_arguments, execute, run_state
from clipjax.sweep.spec import Claim, Fit, Report, Run, Sweep, count, dependency_order, items, load_sweep
from clipjax.sweep.study import collect_points, fit_points
from tests.conftest import REPO_ROOT


def sweep_command(*args):
    return subprocess.run([sys.executable, "-m", "clipjax.sweep", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_run_specs_are_checked_and_ordered_by_dependency():
    a, b = Run("a", "x.py"), Run("b", "x.py", init_from="a")
    c = Run("c", "x.py", after=("a", "b"))
    assert [[run.name for run in wave] for wave in dependency_order((c, b, a))] == [["a"], ["b"], ["c"]]
    for runs, message in (
        ((a, Run("a", "y.py")), "'a' appears twice"),
        ((Run("a/b", "x.py"),), "use letters"),
        ((b,), "depends on 'a', which the sweep does not define"),
        ((Run("p", "x.py", after=("q",)), Run("q", "x.py", after=("p",))), "p, q depend on each other in a cycle"),
    ):
        with pytest.raises(ConfigError, match=message):
            Sweep(runs)
    assert count("1.28M", "sizes") == 1_280_000 and count("12.8k", "sizes") == 12_800 and count("64", "s") == 64
    with pytest.raises(ConfigError, match="not a whole positive count"):
        count("1.2345k", "sizes")
    assert items("real+synthetic", "captions") == ["real", "synthetic"]


def test_the_data_scaling_sweep_pairs_each_task_with_its_pretraining():
    sweep = load_sweep(
        "configs/scaling/data_scaling.py:scale=paper,sizes=1.28M+12.8M,tasks=zeroshot+finetune_det,seeds=2"
    )
    runs = sweep.by_name()
    assert len(runs) == 2 * 2 * 2 * 2  # policies x sizes x seeds x (pretraining + finetuning)
    pretraining = runs["clip_synthetic_12800000_s1"]
    assert pretraining.overrides["data.subset_size"] == 12_800_000 and pretraining.overrides["seed"] == 1
    assert "vit_b16_datacompdr.py:steps=20000,captions=synthetic" in pretraining.config
    assert runs["clip_real_1280000_s0"].config.startswith("configs/pretrain/vit_b16_datacomp.py:")
    detection = runs["finetune_det_synthetic_12800000_s1"]
    assert detection.init_from == "clip_synthetic_12800000_s1" and detection.metric == "eval/box_ap"
    assert detection.axes == {"captions": "synthetic", "pairs": 12_800_000, "seed": 1, "task": "finetune_det"}
    assert sweep.fit.efficiency == ("real", "synthetic")
    with pytest.raises(ConfigError, match="argument tasks='probe_sag' is not one of"):
        load_sweep("configs/scaling/data_scaling.py:tasks=probe_sag")


def test_emitted_scripts_pass_bash_and_name_every_run_once(tmp_path):
    spec = "configs/scaling/data_scaling.py:scale=paper,sizes=1.28M+12.8M,tasks=probe_seg+finetune_det"
    sweep = load_sweep(spec)
    workdir = str(tmp_path / "sweep dir")  # a space: every argument must stay quoted
    for kind in ("shell", "slurm", "tpu"):
        script = emit(kind, spec, sweep.runs, {"clip_real_1280000_s0"}, workdir)
        path = tmp_path / f"{kind}.sh"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, kind
        for run in sweep.runs:  # each run's command once (its workdir argument), but the one done already
            named = script.count(shlex.quote(f"--workdir={os.path.join(workdir, run.name)}"))
            assert named == (0 if run.name == "clip_real_1280000_s0" else 1), (kind, run.name)


def test_a_slurm_array_task_runs_its_own_line_of_arguments(tmp_path):
    """The emitted submission with a fake sbatch, then each array task of wave 1 through the real
    launch/slurm_gpu.sbatch with a fake srun: every task gets exactly its run's arguments."""
    spec = "configs/scaling/data_scaling.py:scale=paper,sizes=1.28M+12.8M,tasks=probe_seg"
    sweep = load_sweep(spec)
    workdir = str(tmp_path / "runs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\necho "$@" >> "$SBATCH_LOG"\necho 1$(wc -l < "$SBATCH_LOG")\n')
    (bin_dir / "srun").write_text("#!/bin/bash\nprintf '%s\\n' \"$@\"\n")
    for tool in ("sbatch", "srun"):
        os.chmod(bin_dir / tool, 0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SBATCH_LOG=str(tmp_path / "sbatch.log"))
    script = tmp_path / "submit.sh"
    script.write_text(emit("slurm", spec, sweep.runs, set(), workdir))
    submitted = subprocess.run(["bash", str(script)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert len(calls) == 2 and "--array=0-3" in calls[0] and "--dependency=afterok:11" in calls[1]
    wave = dependency_order(sweep.runs)[1]
    for task, run in enumerate(wave):
        task_env = dict(env, CLIPJAX_ARGS_FILE=f"{workdir}/slurm/wave1.args", SLURM_ARRAY_TASK_ID=str(task))
        ran = subprocess.run(["bash", "launch/slurm_gpu.sbatch"], cwd=REPO_ROOT, env=task_env, capture_output=True,
                             text=True)  # fmt: skip
        arguments = ran.stdout.splitlines()
        assert arguments[arguments.index("clipjax.main") + 1 :] == clipjax_arguments(run, workdir)


def test_a_failed_run_is_reported_and_the_runs_not_depending_on_it_go_on(tmp_path):
    sweep_file = tmp_path / "broken.py"
    sweep_file.write_text(
        "from clipjax.sweep.spec import Run, Sweep\n"
        "def get_sweep(arg):\n"
        "    return Sweep((Run('first', 'no/such/config.py'), Run('child', 'configs/demo.py', init_from='first'),\n"
        "                  Run('second', 'no/such/other.py')))\n"
    )
    workdir = tmp_path / "sweep"
    result = sweep_command(f"--sweep={sweep_file}", f"--workdir={workdir}")
    assert result.returncode == 1
    assert "[1/3] first: failed (exit 2): error: --config: no such file 'no/such/config.py'" in result.stdout
    assert "second: failed (exit 2)" in result.stdout  # tried after the first failed
    assert "child: blocked: first not done" in result.stdout
    assert not (workdir / "child").exists()
    listed = sweep_command(f"--sweep={sweep_file}", f"--workdir={workdir}", "--list")
    assert "first   failed   exit 2: error: --config: no such file" in listed.stdout
    assert "child   pending" in listed.stdout


def test_fit_inverts_known_laws_into_their_data_efficiency(monkeypatch):
    """Points of E = 2 D^-0.3 (curve a) and of a curve b needing 10x less data, three seeds each: the ratio
    at every error b measured is 10; mIoU is fitted as 1 - mIoU and rmse as it is (the probe task declares
    which is better)."""
    rng = np.random.default_rng(0)
    runs, summaries = [], {}
    for curve, scale in (("a", 1.0), ("b", 10.0)):
        for size in (1e3, 1e4, 1e5):
            for seed in range(3):
                error = 2 * (size * scale) ** -0.3 * np.exp(rng.normal(0, 0.01))
                name = f"{curve}_{int(size)}_{seed}"
                runs.append(
                    Run(name, "x.py", axes={"captions": curve, "pairs": size, "seed": seed}, metric="eval/miou")
                )
                summaries[name] = 1 - error
    fit = Fit(size="pairs", curve="captions", efficiency=("a", "b"))
    monkeypatch.setattr(
        study, "read_summary", lambda _, name: {"task": "probe", "summary": {"eval/miou": summaries[name]}}
    )
    points = collect_points(tuple(runs), fit, "unused")
    assert {point["error"] for point in points} == {"1 - metric"}
    (panel,) = fit_points(points, fit, bootstrap=50)
    assert panel["curves"]["a"]["power"]["alpha"] == pytest.approx(0.3, abs=0.02)
    for row in panel["efficiency"]:
        assert row["fit_power"] == pytest.approx(10, rel=0.1)
    # The largest error b measured lies inside a's range: the fit-free ratio exists there too.
    assert panel["efficiency"][0]["interpolated"] == pytest.approx(10, rel=0.15)
    assert study.error_form(Fit(), "probe", "eval/rmse") == "metric"
    with pytest.raises(ConfigError, match="does not declare 'train/loss'"):
        study.error_form(Fit(), "pretrain", "train/loss")


def test_a_done_run_with_other_arguments_runs_again_and_a_locked_run_is_busy(tmp_path):
    run = Run("r", "configs/demo.py", {"total_steps": 5})
    directory = tmp_path / "r"
    directory.mkdir()
    summary = {"task": "pretrain", "arguments": clipjax_arguments(run, str(tmp_path)), "summary": {"steps": 5}}
    (directory / "summary.json").write_text(json.dumps(summary))
    assert run_state(run, str(tmp_path)).state == "done"
    assert run_state(Run("r", "configs/demo.py", {"total_steps": 9}), str(tmp_path)).state == "changed"
    with open(directory / "sweep.lock", "w") as lock:  # another sweep process is running it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with StopRequests() as stops, pytest.raises(Busy, match="another sweep is running r"):
            execute(run, str(tmp_path), stops)


def test_the_shell_queue_stops_with_a_stopped_run(tmp_path):
    """A run that exits 75 (saved after SIGTERM / Ctrl-C) stops the emitted shell queue; nothing after it runs."""
    sweep = Sweep((Run("a", "x.py"), Run("b", "x.py")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/ran\nexit 75\n')
    os.chmod(bin_dir / "python", 0o755)
    script = tmp_path / "queue.sh"
    script.write_text(emit("shell", "s.py", sweep.runs, set(), str(tmp_path / "runs")))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 75 and "a: stopped" in result.stdout
    assert len((tmp_path / "ran").read_text().splitlines()) == 1  # b never started
    with pytest.raises(ConfigError, match="holds a line break"):
        emit("shell", "s.py", (Run("c", "x.py", {"data.path": "a\nb"}),), set(), str(tmp_path))


def test_fit_leaves_out_points_it_cannot_fit_and_names_them(monkeypatch):
    values = {"a_1": 0.5, "a_2": 0.6, "a_3": float("nan"), "a_4": 1.0}  # a diverged run; a perfect score
    runs = tuple(Run(name, "x.py", axes={"captions": "a", "pairs": 10 ** int(name[-1]), "seed": 0}, metric="eval/miou")
                 for name in values)  # fmt: skip
    monkeypatch.setattr(
        study, "read_summary", lambda _, name: {"task": "probe", "summary": {"eval/miou": values[name]}}
    )
    fit = Fit(size="pairs", curve="captions", efficiency=("a", "a"))
    (panel,) = fit_points(collect_points(runs, fit, "unused"), fit, bootstrap=10)
    curve = panel["curves"]["a"]
    assert [p["run"] for p in curve["left_out"]] == ["a_3", "a_4"] and len(curve["points"]) == 2
    assert np.isnan(curve["power"]["bootstrap"]["alpha"][0])  # one seed per size: no spread to draw from
    assert "left out of the fits: a_3" in study.format_table([panel], fit)


def test_the_miniature_calibration_sweep_probes_every_arm_and_random_weights():
    sweep = load_sweep("configs/study/miniature_calibration.py:seeds=1")
    runs = sweep.by_name()
    assert len(runs) == 3 + 4 * 2  # three pretrainings; four arms x two probes
    random_depth = runs["probe_depth_random_s0"]
    assert random_depth.init_from is None and random_depth.overrides["model.image.width"] == 64
    assert runs["probe_segment_mae_s0"].init_from == "mae_s0"
    assert runs["clip_quality_s0"].overrides["data.synthetic.caption_detail"] == "full"
    assert all(run.overrides["data.synthetic.perspective"] for run in runs.values())
    assert [claim.worse for claim in sweep.report.claims[:3]] == ["random"] * 3


def test_a_saved_sweep_reads_back_as_the_runs_it_was_made_of(tmp_path):
    """sweep.json's lists become the tuples a Run holds again (after, run_dirs), so the Runs compare equal."""
    from clipjax.sweep.__main__ import load_saved_sweep, save_sweep

    runs = (Run("a", "x.py"), Run("b", "y.py", after=("a",), run_dirs={"analyze.inits": ("a",)}))
    save_sweep(str(tmp_path), "study.py", Sweep(runs))
    spec, loaded = load_saved_sweep(str(tmp_path))
    assert spec == "study.py" and loaded.runs == runs


def test_fit_reads_the_saved_sweep_back_and_writes_fits_picture_and_report(tmp_path, capsys):
    """`python -m clipjax.sweep fit` in-process on runs written by hand: sweep.json (Fit and Report with their
    tuples) read back, points from the summaries, report.md from the metrics.jsonl files."""
    from clipjax.sweep.__main__ import main as sweep_main
    from clipjax.sweep.__main__ import save_sweep

    runs = []
    for curve, offset in (("real", 0.0), ("synthetic", 0.05)):
        for size in (100, 1000, 10000):
            name = f"{curve}_{size}"
            miou = 0.3 + offset + 0.05 * np.log10(size)
            directory = tmp_path / name
            directory.mkdir()
            summary = {"task": "probe", "summary": {"eval/miou": miou}}  # no arguments: an older clipjax's
            (directory / "summary.json").write_text(json.dumps(summary))
            (directory / "config.json").write_text(json.dumps({"task": "probe"}))
            (directory / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/miou": miou}) + "\n")
            runs.append(Run(name, "x.py", axes={"captions": curve, "pairs": size, "seed": 0, "task": "seg"},
                            metric="eval/miou"))  # fmt: skip
    report = Report("Study", arm="captions", claims=(Claim("synthetic beats real", "synthetic", "real"),),
                    efficiency_claim="synthetic is more data-efficient")  # fmt: skip
    fit = Fit(size="pairs", curve="captions", panels=("task",), efficiency=("real", "synthetic"))
    save_sweep(str(tmp_path), "study.py", Sweep(tuple(runs), fit, report))
    assert sweep_main(["fit", f"--workdir={tmp_path}", "--bootstrap=5"]) == 0
    assert "task=seg: eval/miou (fitted: E = 1 - eval/miou, D = pairs)" in capsys.readouterr().out
    assert len((tmp_path / "points.csv").read_text().splitlines()) == 1 + 6
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "report.md").read_text()
    assert "- **synthetic beats real**: holds" in text and "- **synthetic is more data-efficient**: holds" in text
