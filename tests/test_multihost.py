"""Two processes with two CPU devices each, joined by launch/local.sh, train like one process with four:
the same loss sequence, a resume from their own checkpoint, metrics written once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.xla_flags import cpu_xla_flags

# The naive loss keeps this test fast: with the fused loss, XLA's CPU collectives between processes that
# each hold two devices stall for seconds per step (see README, Scaling out). Both losses run the same
# loop, mesh and data code, which is what this test is about.
COMMON = [
    "--config.loss.impl=naive",
    "--config.log_every=1",
    "--config.checkpoint_every=3",
    "--config.eval_every=0",
    "--config.eval.zeroshot.num_examples=16",
]


def host_environment(repo_root, devices):
    """The environment of each simulated host: `devices` CPU devices, without the suite's compilation cache
    (two CPU processes sharing JAX's persistent cache hung there, JAX 0.10.2; not looked into further)."""
    env = dict(os.environ, XLA_FLAGS=cpu_xla_flags(devices), PYTHON=sys.executable)
    env["PYTHONPATH"] = repo_root
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def run(repo_root, workdir, devices, processes, steps):
    env = host_environment(repo_root, devices)
    args = [f"--config={repo_root}/tests/configs/tiny_pretrain.py", f"--workdir={workdir}", *COMMON]
    args.append(f"--config.total_steps={steps}")
    if processes == 1:
        command = [sys.executable, "-m", "clipjax.main", *args]
    else:
        command = [os.path.join(repo_root, "launch", "local.sh"), str(processes), "--", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=repo_root)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def single(repo_root, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("single"))
    run(repo_root, workdir, devices=4, processes=1, steps=6)
    return rows(workdir)


def test_two_hosts_train_like_one_and_resume_from_their_checkpoint(repo_root, tmp_path, single):
    workdir = str(tmp_path / "two_hosts")
    first = run(repo_root, workdir, devices=2, processes=2, steps=6)
    assert "4 cpu devices on 2 hosts, mesh data=4, fsdp=1, global batch 16" in first
    assert first.count("clipjax pretrain finished") == 1  # the summary is printed by one host
    uninterrupted = rows(workdir)
    train = [row for row in uninterrupted if "train/loss" in row]
    assert [row["step"] for row in train] == [1, 2, 3, 4, 5, 6]  # one writer: no row twice
    # Each host saved its own data position.
    data = os.listdir(os.path.join(workdir, "checkpoints", "6", "data"))
    assert sorted(name for name in data if name.startswith("process_")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    one = [row for row in single if "train/loss" in row]
    # Every step sees the same 16 examples as the one-process run (in another row order, so sums round
    # differently): equal up to float32 rounding.
    np.testing.assert_allclose([r["train/loss"] for r in train], [r["train/loss"] for r in one], rtol=1e-5)
    np.testing.assert_allclose([r["train/grad_norm"] for r in train], [r["train/grad_norm"] for r in one], rtol=1e-4)
    final_two = [row for row in uninterrupted if "eval/zeroshot_top1" in row][-1]
    final_one = [row for row in single if "eval/zeroshot_top1" in row][-1]
    assert final_two["eval/zeroshot_top1"] == final_one["eval/zeroshot_top1"]

    # As if both hosts died after step 3's checkpoint: the same command resumes there and logs steps 4-6
    # exactly as the uninterrupted run did.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    resumed = run(repo_root, workdir, devices=2, processes=2, steps=6)
    assert "steps                    6" in resumed

    def without_timing(table):
        return [{k: v for k, v in row.items() if k != "train/pairs_per_s"} for row in table if "train/loss" in row]

    assert without_timing(rows(workdir)) == without_timing(train)


def test_sigterm_stops_every_host_at_the_same_step_with_a_checkpoint(repo_root, tmp_path):
    workdir = str(tmp_path / "stopped")
    env = host_environment(repo_root, 2)
    args = [f"--config={repo_root}/tests/configs/tiny_pretrain.py", f"--workdir={workdir}", *COMMON]
    args += ["--config.total_steps=100000", "--config.checkpoint_every=100000", "--config.stop_check_every=1"]
    launcher = subprocess.Popen(
        [os.path.join(repo_root, "launch", "local.sh"), "2", "--", *args],
        env=env,
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
        time.sleep(0.5)
    launcher.send_signal(signal.SIGTERM)  # local.sh passes it on to both processes
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 75, stderr[-3000:]
    assert "SIGTERM at step" in stderr
    steps = [int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 1  # one checkpoint, written by both hosts together
    data = os.listdir(os.path.join(workdir, "checkpoints", str(steps[0]), "data"))
    assert sorted(name for name in data if name.startswith("process_")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"SLURM_NTASKS": "16"}, None),  # an allocation, but this process was not started by srun
        ({"SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16"}, "slurm"),
        ({"SLURM_STEP_NUM_TASKS": "1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, None),  # a single-host TPU VM
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, "tpu"),
        ({"CLIPJAX_DISTRIBUTED": "1"}, "tpu"),  # launch/tpu_vm.sh: a Cloud TPU VM slice's workers
    ],
)
def test_cluster_detection(monkeypatch, env, expected):
    from clipjax.distributed import detect_cluster

    for name in (
        "SLURM_NTASKS",
        "SLURM_STEP_NUM_TASKS",
        "TPU_WORKER_HOSTNAMES",
        "MEGASCALE_COORDINATOR_ADDRESS",
        "CLIPJAX_DISTRIBUTED",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert detect_cluster() == expected


def test_multi_host_flags_are_all_or_nothing():
    from clipjax.distributed import initialize
    from clipjax.errors import ConfigError

    with pytest.raises(ConfigError, match="--num_processes --process_id missing"):
        initialize({"coordinator_address": "127.0.0.1:1234"})
    with pytest.raises(ConfigError, match="need HOST:PORT and 0 <= process_id < num_processes"):
        initialize({"coordinator_address": "127.0.0.1:1234", "num_processes": "2", "process_id": "2"})


def test_hosts_that_read_different_shards_stop_before_training(monkeypatch, tmp_path):
    """Two hosts whose sources number the samples differently would read overlapping data: pretrain_source
    compares the sources' fingerprints over all hosts (two hosts here, gathered by a stand-in allgather)."""
    import numpy as np

    from clipjax import distributed
    from clipjax.config import load_config
    from clipjax.data.pretrain import pretrain_source
    from clipjax.data.webdataset import WebDatasetSource, expand_shards
    from clipjax.errors import UserError
    from tests.shards import write_datasets

    written = write_datasets(str(tmp_path))
    config = load_config("configs/demo.py", [("data.kind", "webdataset"), ("data.path", written.image_pattern)])
    other_host = {}
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    monkeypatch.setattr(
        distributed.multihost_utils, "process_allgather", lambda values: np.stack([values, other_host["values"]])
    )
    mine = WebDatasetSource(expand_shards(written.image_pattern), log=lambda _: None).fingerprint()
    other_host["values"] = mine
    assert len(pretrain_source(config)) == len(written.samples)  # the hosts agree
    other_host["values"] = mine + np.uint32(1)
    with pytest.raises(UserError, match="the hosts read different shards"):
        pretrain_source(config)
