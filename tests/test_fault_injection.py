"""Fault injection through the real command line: a pretraining run killed with SIGKILL at three random
moments (one of them in the middle of a checkpoint save) and stopped once with SIGTERM, restarted each
time with the same command, ends bit-identical to an uninterrupted run: same final parameters and
optimizer state, same logged loss sequence."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from clipjax.train.metrics import read_metrics
from tests.xla_flags import cpu_xla_flags

CONFIG = "tests/configs/tiny_pretrain.py"
TOTAL_STEPS = 36
TMP_MARK = ".orbax-checkpoint-tmp"


def launch(repo_root, workdir):
    env = {**os.environ, "XLA_FLAGS": cpu_xla_flags(2), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "clipjax.main", f"--config={CONFIG}", f"--workdir={workdir}"],
        cwd=repo_root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def last_logged_step(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return 0
    return max(steps, default=0)


def saving_now(workdir):
    try:
        return any(TMP_MARK in name for name in os.listdir(os.path.join(workdir, "checkpoints")))
    except FileNotFoundError:
        return False


def complete_checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def run_until(process, trigger, timeout=240):
    """Polls `trigger` every half millisecond; True when it fired while the process still ran."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if trigger():
            return True
        time.sleep(0.0005)
    process.kill()
    raise AssertionError("the run neither finished nor reached the trigger in time")


def saved_arrays(workdir, step):
    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
    restored = ocp.StandardCheckpointer().restore(path)
    return {k: v for k, v in restored.items() if k in ("params", "opt_state", "step", "rng", "skipped_steps")}


def loss_sequence(workdir):
    return [{k: v for k, v in row.items() if k != "train/pairs_per_s"} for row in read_metrics(str(workdir))]


@pytest.fixture(scope="module")
def uninterrupted(repo_root, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("whole"))
    process = launch(repo_root, workdir)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return workdir


def test_killed_and_restarted_run_equals_the_uninterrupted_one(repo_root, tmp_path, uninterrupted):
    rng = random.Random(20261127)
    workdir = str(tmp_path / "killed")
    events = []

    # 1. SIGKILL at a random moment between two logged steps.
    process = launch(repo_root, workdir)
    target = rng.randint(5, 14)
    assert run_until(process, lambda: last_logged_step(workdir) >= target)
    process.send_signal(signal.SIGKILL)
    process.wait()
    events.append(("SIGKILL after step", last_logged_step(workdir)))

    # 2. SIGKILL while a checkpoint is being written: the torn checkpoint must never be loaded.
    for _attempt in range(3):
        stale = saving_now(workdir)  # a torn save left by step 1, which the restart cleans up first
        process = launch(repo_root, workdir)
        if stale:
            assert run_until(process, lambda: not saving_now(workdir))
        fired = run_until(process, lambda: saving_now(workdir))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        torn = [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if TMP_MARK in n]
        if fired and torn:
            events.append(("SIGKILL during the save of", torn[0]))
            break
    else:
        pytest.fail("could not catch a checkpoint save in flight in three runs")

    # 3. SIGTERM (preemption notice): the run saves the current step and exits with status 75.
    # Rows an interrupted run logged after its last checkpoint stay in metrics.jsonl until the restart
    # sets them aside, so the trigger waits for a step beyond them.
    stale = last_logged_step(workdir)
    process = launch(repo_root, workdir)
    target = stale + rng.randint(2, 6)
    assert run_until(process, lambda: last_logged_step(workdir) >= target)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 75, err
    assert "stopped: SIGTERM at step" in err
    stopped_at = int(err.split("SIGTERM at step ")[1].split(":")[0])
    assert stopped_at in complete_checkpoints(workdir)
    events.append(("SIGTERM, saved step", stopped_at))

    # 4. SIGKILL again, at a random moment after the resume.
    process = launch(repo_root, workdir)
    target = min(stopped_at + rng.randint(2, 8), TOTAL_STEPS - 4)
    assert run_until(process, lambda: last_logged_step(workdir) >= target)
    process.send_signal(signal.SIGKILL)
    process.wait()
    events.append(("SIGKILL after step", last_logged_step(workdir)))

    # Finally the same command runs to the end.
    process = launch(repo_root, workdir)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, (events, err)

    assert not any(TMP_MARK in n for n in os.listdir(os.path.join(workdir, "checkpoints")))
    assert loss_sequence(workdir) == loss_sequence(uninterrupted), events
    killed, whole = saved_arrays(workdir, TOTAL_STEPS), saved_arrays(uninterrupted, TOTAL_STEPS)
    flat_killed = dict(_flatten(killed))
    flat_whole = dict(_flatten(whole))
    assert flat_killed.keys() == flat_whole.keys()
    for key, value in flat_whole.items():
        np.testing.assert_array_equal(flat_killed[key], value, err_msg=f"{key} after {events}")


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}/{key}")
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}/{index}")
    else:
        yield prefix, np.asarray(tree)
