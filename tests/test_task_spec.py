"""A task added without touching clipjax: this file declares a small task (a TaskSpec over the shared step
and loop), a config file registers it, and `clipjax.main` dispatches to it, validates it with its own and
the generic checks, trains, evaluates, checkpoints and resumes it like any built-in task."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clipjax.config import load_config
from clipjax.data.batching import configured_batches
from clipjax.errors import ConfigError
from clipjax.main import main
from clipjax.tasks import data_kinds, get_task, registered
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Task, train
from clipjax.train.metrics import read_metrics
from clipjax.train.optim import lr_schedule
from clipjax.train.state import TrainState
from clipjax.train.step import training_step


class Pixels:
    """30 records, each a 2 x 2 image of the levels 0, 64, 128, 64 (in any order): every batch's mean pixel is
    64 / 255 after normalize="none", the one number the toy model learns."""

    def __len__(self):
        return 30

    def __getitem__(self, index):
        levels = np.roll(np.array([0, 64, 128, 64], np.uint8), index)
        return {"image": np.repeat(levels.reshape(2, 2, 1), 3, axis=-1)}


def run_toy(config, workdir, mesh):
    tx = optax.sgd(lr_schedule(config.optim, config.total_steps))

    def init_state(rng):
        return TrainState.create({"params": {"w": jnp.zeros(())}}, tx, rng)

    def loss_fn(params, model_state, batch, rng):
        return jnp.mean((params["w"] - batch["image"]) ** 2), (model_state, {"train/w": params["w"]})

    def evaluate(variables):
        return {"eval/error": jnp.abs(variables["params"]["w"] - 64 / 255)}

    task = Task(
        init_state=init_state,
        train_step=training_step(config, tx, loss_fn),
        dataset=lambda start: configured_batches(
            config,
            Pixels(),
            lambda record, rng: record,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_sample=start,
        ),
        evaluate=evaluate,
        examples_per_step=config.batch_size,
    )
    return train(config, workdir, mesh, task)


def validate_toy(config):
    if config.data.normalize != "none":
        raise ConfigError("config.data.normalize must be 'none' for the toy task (it learns the raw pixel mean)")


TOY = TaskSpec(
    name="toy_mean",
    run=run_toy,
    title="toy",
    validate=validate_toy,
    data_kinds=("synthetic",),
    init="none",
    metrics=("error",),
    lower_is_better=("error",),
)

CONFIG = """
from ml_collections import ConfigDict

from clipjax.tasks import register
from tests.test_task_spec import TOY

register(TOY)


def get_config(arg=None):
    c = ConfigDict()
    c.task = "toy_mean"
    c.batch_size = 8
    c.total_steps = 40
    c.log_every = 10
    c.checkpoint_every = 20
    c.progress_bar = False
    c.optim = ConfigDict({"lr": 0.1, "warmup_steps": 0, "min_lr_ratio": 1.0})  # a constant rate
    c.data = ConfigDict({"normalize": "none", "num_threads": 1, "prefetch_to_device": 0})
    return c
"""


@pytest.fixture
def toy_config_file(tmp_path):
    path = tmp_path / "toy_mean.py"
    path.write_text(CONFIG)
    return str(path)


def test_a_task_declared_outside_clipjax_runs_through_the_command_line(toy_config_file, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main([f"--config={toy_config_file}", f"--workdir={workdir}"]) == 0
    assert "clipjax toy_mean finished" in capsys.readouterr().out
    assert get_task("toy_mean") is TOY and "toy_mean" in registered() and "synthetic" in data_kinds()
    rows = read_metrics(workdir)
    assert [row["step"] for row in rows if "train/loss" in row] == [10, 20, 30, 40]
    final = rows[-1]
    # SGD on the squared error of a constant: w moves to the mean pixel (64 / 255) by a factor 1 - 2 lr a step.
    assert final["step"] == 40 and final["eval/error"] < 1e-3
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "40"]
    # The same command with more steps resumes from the checkpoint of step 40.
    assert main([f"--config={toy_config_file}", f"--workdir={workdir}", "--config.total_steps=50"]) == 0
    assert [row["step"] for row in read_metrics(workdir) if "train/loss" in row] == [10, 20, 30, 40, 50]


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.data.normalize=clip", "config.data.normalize must be 'none' for the toy task"),  # its own check
        ("--config.data.kind=tfds", "config.data.kind (toy)='tfds' is not one of 'synthetic'"),  # its data kinds
        ("--config.init=/weights", "task 'toy_mean' starts from random weights"),  # its init rule
        ("--config.optim.ema_decay=0.9", "finetuning settings; task 'toy_mean' needs"),  # not a finetuning task
        ("--config.batch_size=6", "not divisible by the data-parallel size 8"),  # the generic checks
    ],
)
def test_a_declared_task_is_validated_by_its_spec_and_the_generic_checks(
    toy_config_file, tmp_path, capsys, override, message
):
    extra = ["--config.data.path=/data"] if "kind=" in override else []
    assert main([f"--config={toy_config_file}", f"--workdir={tmp_path / 'w'}", override, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_second_task_of_the_same_name_is_refused_and_a_spec_must_be_consistent(toy_config_file):
    from clipjax.tasks import register

    load_config(toy_config_file)  # registers TOY
    load_config(toy_config_file)  # the config file executed again: the same task, registered again
    assert register(TOY) is TOY
    again = TaskSpec(name="toy_mean", run=run_toy, init="none")  # a module executed again makes a new spec
    assert register(again) is again and get_task("toy_mean") is again
    register(TOY)

    def other_run(config, workdir, mesh):
        return {}

    for name in ("toy_mean", "pretrain"):  # clipjax's own tasks included, before any of them was asked for
        with pytest.raises(ConfigError, match=f"a task named '{name}' is registered already"):
            register(TaskSpec(name=name, run=other_run))
    with pytest.raises(ValueError, match="lower_is_better names metrics it does not log"):
        TaskSpec(name="bad", run=run_toy, metrics=("top1",), lower_is_better=("rmse",))
    with pytest.raises(ValueError, match="init='sometimes'"):
        TaskSpec(name="bad", run=run_toy, init="sometimes")
    with pytest.raises(ValueError, match="a finetuning task names the best_metric"):
        TaskSpec(name="bad", run=run_toy, finetunes=True, metrics=("top1",))
