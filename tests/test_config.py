"""Config files, big_vision-style arguments, command-line overrides and one-line validation errors."""

import os
import subprocess
import sys

import pytest

from clipjax.config import ConfigError, apply_override, load_config, merge_onto_defaults, parse_arg
from clipjax.defaults import base_config
from clipjax.main import main, parse_command_line
from clipjax.validation import validate


def write_config(tmp_path, body):
    path = tmp_path / "cfg.py"
    path.write_text("from ml_collections import ConfigDict\n\ndef get_config(arg=None):\n" + body)
    return str(path)


def test_parse_arg_casts_to_the_default_types():
    args = parse_arg("smoke,res=64,lr=0.5,name=x", smoke=False, res=224, lr=1.0, name="y")
    assert (args.smoke, args.res, args.lr, args.name) == (True, 64, 0.5, "x")
    assert parse_arg(None, smoke=False).smoke is False
    with pytest.raises(ConfigError, match="unknown config argument 'colour'"):
        parse_arg("colour=red", smoke=False)


def test_file_argument_and_overrides(repo_root):
    demo = os.path.join(repo_root, "configs", "demo.py")
    full = load_config(demo)
    smoke = load_config(demo + ":smoke", [("batch_size", "32"), ("model.name", "vit_s16"), ("optim.lr", "3e-4")])
    assert smoke.total_steps < full.total_steps
    assert (smoke.batch_size, smoke.model.name, smoke.optim.lr) == (32, "vit_s16", 3e-4)
    assert smoke.seed == base_config().seed  # keys the file leaves alone keep their defaults


def test_paper_config_takes_the_issue_overrides(repo_root):
    path = os.path.join(repo_root, "configs", "pretrain", "vit_b16_datacompdr.py")
    config = load_config(path, [("batch_size", "65536"), ("total_steps", "20000")])
    assert (config.batch_size, config.total_steps, config.model.name) == (65536, 20000, "vit_b16")


def test_override_types():
    config = base_config()
    apply_override(config, "progress_bar", "false")
    apply_override(config, "init", "/tmp/ckpt")
    apply_override(config, "data.path", "None")
    apply_override(config, "model.image.width", "96")
    assert (config.progress_bar, config.init, config.data.path, config.model.image.width) == (
        False,
        "/tmp/ckpt",
        None,
        96,
    )
    with pytest.raises(ConfigError, match="config.batch_size expects a int, got 'many'"):
        apply_override(config, "batch_size", "many")
    with pytest.raises(ConfigError, match="config.mesh is a group"):
        apply_override(config, "mesh", "4")


@pytest.mark.parametrize(
    "key,message",
    [
        ("optim.lrr", "unknown config key 'config.optim.lrr'; did you mean 'config.optim.lr'?"),
        ("batchsize", "did you mean 'config.batch_size'?"),
        ("modle.name", "unknown config key 'config.modle'; did you mean 'config.model'?"),
    ],
)
def test_unknown_override_key_names_the_key_and_the_fix(key, message):
    with pytest.raises(ConfigError) as error:
        apply_override(base_config(), key, "1")
    assert message in str(error.value)


def test_unknown_key_in_a_config_file(tmp_path):
    path = write_config(
        tmp_path, "    c = ConfigDict()\n    c.optim = ConfigDict({'learning_rate': 1.0})\n    return c\n"
    )
    with pytest.raises(ConfigError, match="unknown config key 'config.optim.learning_rate'"):
        load_config(path)


def test_wrong_type_in_a_config_file():
    with pytest.raises(ConfigError, match="config.total_steps expects a int"):
        merge_onto_defaults({"total_steps": "lots"})


def valid_demo(repo_root):
    return load_config(os.path.join(repo_root, "configs", "demo.py"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model.name": "vit_q16"}, "config.model.name='vit_q16' is not a known model; choose one of vit_ti14"),
        ({"batch_size": "100"}, "config.batch_size=100 is not divisible by the data-parallel size 8"),
        ({"data.kind": "webdataset"}, "config.data.path is required with config.data.kind='webdataset'"),
        ({"data.kind": "laion"}, "config.data.kind='laion' is not one of"),
        ({"data.captions": "best"}, "config.data.captions='best' is not one of"),
        ({"mesh.data": "3"}, "config.mesh: mesh sizes"),
        ({"model.image.heads": "5"}, "config.model.image.width=128 is not divisible by heads=5"),
        ({"model.image_size": "60"}, "config.model.image_size=60 is not divisible by the patch size"),
        ({"task": "segmnet"}, "config.task='segmnet' is not one of 'analyze', 'depth', 'detect', 'evaluate'"),
        ({"init": "/ckpt"}, "unset config.init"),
        ({"model.image.patch_size": "12"}, "config.model.image.stem='conv' needs a power-of-two patch size"),
        ({"model.image.stem": "hybrid"}, "config.model.image.stem='hybrid' is not one of"),
        ({"loss.kind": "siglip"}, "config.loss.kind='siglip' needs a logit bias: set config.model.logit_bias_init=-10"),
        ({"loss.impl": "flash"}, "config.loss.impl='flash' is not one of 'fused', 'naive'"),
        (
            {"data.kind": "webdataset", "data.path": "/d/{0..9}.tar", "data.captions": "both"},
            "config.data.captions='both' needs synthetic captions: pass the DataCompDR shards",
        ),
        ({"loss.distill_weight": "1.5"}, "config.loss.distill_weight=1.5 must lie in [0, 1] (0: no distillation)"),
        ({"loss.distill_weight": "0.75"}, "config.loss.distill_weight > 0 reads the teacher embeddings stored in"),
        (
            {"loss.distill_weight": "0.75", "data.kind": "webdataset", "data.path": "/d", "data.synthetic_path": "/s"}
            | {"data.flip": "true"},
            "config.data.flip must be False with distillation",
        ),
        (
            {"loss.distill_weight": "0.75", "data.kind": "webdataset", "data.path": "/d", "data.synthetic_path": "/s"}
            | {"loss.teacher_dims": "(768,0)"},
            "config.loss.teacher_dims=(768, 0) must be the positive widths of the teacher's members",
        ),
        ({"optim.no_decay": "(1,)"}, "config.optim.no_decay=(1,) must be a tuple of parameter names"),
        (
            {"data.kind": "webdataset", "data.path": "gs://b/{0..9}.tar"},
            "config.data.path='gs://b/{0..9}.tar' is read through the file system: mount the bucket",
        ),
        (
            {"task": "evaluate", "init": "gs://b/run/checkpoints"},
            "pass the run's workdir: its config.json names the checkpoint_dir, which is read from the bucket",
        ),
        ({"eval.zeroshot.kind": "imagenet"}, "config.eval.zeroshot.kind='imagenet' is not one of"),
        ({"eval.zeroshot.kind": "tfds"}, "config.eval.zeroshot.path is required with config.eval.zeroshot.kind='tfds'"),
        ({"eval.zeroshot.classnames": "wordnet"}, "config.eval.zeroshot.classnames='wordnet' is not one of"),
        ({"eval.retrieval.batch_size": "12"}, "config.eval.retrieval.batch_size=12 is not divisible"),
    ],
)
def test_validation_errors(repo_root, overrides, message):
    config = valid_demo(repo_root)
    for key, value in overrides.items():
        apply_override(config, key, value)
    with pytest.raises(ConfigError) as error:
        validate(config, num_devices=8, process_count=1)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_valid_configs_pass(repo_root):
    validate(valid_demo(repo_root), num_devices=8, process_count=1)
    paths = [("data.path", "/x"), ("data.synthetic_path", "/y"), ("eval.zeroshot.path", "/tfds")]
    config = load_config(os.path.join(repo_root, "configs", "pretrain", "vit_b16_datacompdr.py"), paths)
    validate(config, num_devices=8, process_count=1)
    assert config.loss.distill_weight == 0.0
    for name, weight in [("vit_b16_datacompdr.py:distill=0.75", 0.75), ("mci_datacompdr.py:model=mci0,distill=1", 1.0)]:
        distilled = load_config(os.path.join(repo_root, "configs", "pretrain", name), paths)
        validate(distilled, num_devices=8, process_count=1)
        assert (distilled.loss.distill_weight, tuple(distilled.loss.teacher_dims)) == (weight, (768, 768))


@pytest.mark.parametrize("steps", [20_000, 200_000])
def test_paper_configs_differ_in_captions_only(repo_root, steps):
    directory = os.path.join(repo_root, "configs", "pretrain")
    web = load_config(os.path.join(directory, f"vit_b16_datacomp.py:steps={steps}"))
    synthetic = load_config(os.path.join(directory, f"vit_b16_datacompdr.py:steps={steps}"))
    assert (web.data.captions, synthetic.data.captions) == ("real", "both")
    web.data.captions = synthetic.data.captions
    assert web.to_dict() == synthetic.to_dict()
    optim = synthetic.optim
    assert (synthetic.batch_size, synthetic.total_steps, synthetic.model.name) == (65_536, steps, "vit_b16")
    assert (optim.lr, optim.warmup_steps, optim.weight_decay, optim.b2, optim.grad_clip_norm) == (
        1e-3,
        1000,
        0.2,
        0.95,
        1.0,
    )
    runnable = load_config(
        os.path.join(directory, f"vit_b16_datacomp.py:steps={steps}"),
        [("data.path", "/x"), ("eval.zeroshot.path", "/t")],
    )
    validate(runnable, num_devices=8, process_count=1)


def test_command_line_parsing():
    command = parse_command_line(
        ["--config", "a.py:smoke", "--workdir=w", "--config.batch_size=8", "--config.x.y", "z", "--process_id=1"]
    )
    assert (command.spec, command.workdir) == ("a.py:smoke", "w")
    assert command.overrides == [("batch_size", "8"), ("x.y", "z")] and command.distributed == {"process_id": "1"}
    with pytest.raises(ConfigError, match="unknown flag --steps"):
        parse_command_line(["--config=a.py", "--workdir=w", "--steps=3"])
    with pytest.raises(ConfigError, match="--config and --workdir are required"):
        parse_command_line(["--config=a.py"])


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--config.modle.name=vit_b16"], "did you mean 'config.model'"),
        (["--config.batch_size=100"], "not divisible by the data-parallel size 8"),
        (["--config.model.name=vit_huge"], "is not a known model"),
        (["--config.data.kind=webdataset"], "config.data.path is required"),
        (["--config.data.kind=tfds", "--config.data.path=/data/imagenet"], "holds labelled images, not captions"),
    ],
)
def test_main_prints_one_line_and_exits_2(repo_root, tmp_path, capsys, extra, fragment):
    demo = os.path.join(repo_root, "configs", "demo.py")
    status = main([f"--config={demo}:smoke", f"--workdir={tmp_path / 'w'}", "--config.progress_bar=false", *extra])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_bucket_workdir_is_refused_before_anything_is_written(repo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # os.makedirs("gs://b/run") would make ./gs:/b/run
    demo = os.path.join(repo_root, "configs", "demo.py")
    assert main([f"--config={demo}:smoke", "--workdir=gs://b/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the workdir (config, metrics, logs) is a local or mounted directory" in err and "\n" not in err
    assert not os.path.exists(tmp_path / "gs:")


def test_cli_process_exit_status(repo_root, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipjax.main",
            "--config=configs/demo.py",
            f"--workdir={tmp_path}",
            "--config.optim.lrr=1",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'config.optim.lrr'; did you mean 'config.optim.lr'?"
    )


@pytest.mark.parametrize("cluster, devices, hosts", [("v4-64", 32, 8), ("v5p-128", 64, 16), ("h100x16", 16, 2)])
def test_cluster_presets_fit_their_machines(repo_root, cluster, devices, hosts):
    paths = [("data.path", "/x"), ("data.synthetic_path", "/y"), ("eval.zeroshot.path", "/t")]
    spec = os.path.join(repo_root, "configs", "pretrain", f"vit_b16_datacompdr.py:cluster={cluster}")
    config = load_config(spec, paths)
    validate(config, num_devices=devices, process_count=hosts)
    assert config.batch_size // devices == {32: 2048, 64: 1024, 16: 4096}[devices]
    with pytest.raises(ConfigError, match="argument cluster='v3-8' is not one of"):
        load_config(spec.replace(cluster, "v3-8"), paths)
