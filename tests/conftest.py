"""Test setup: 8 simulated CPU devices (set before JAX is imported), one work directory and compilation cache
per test run, the smoke pretraining started in the background, and shared fixtures."""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from tests.xla_flags import cpu_xla_flags  # imports nothing: JAX must not load before XLA_FLAGS is set

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + cpu_xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One directory for the whole test run, shared by its xdist workers (they inherit the variable from the
# process that starts them) and removed when the run ends.
_OWN_RUN_DIR = "CLIPJAX_TEST_RUN_DIR" not in os.environ
if _OWN_RUN_DIR:
    os.environ["CLIPJAX_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="clipjax-test-run-")
RUN_DIR = os.environ["CLIPJAX_TEST_RUN_DIR"]
# One persistent compilation cache for the run, also used by the runs tests start: a program compiled once
# (a restarted or resumed run's, or one that several tests build) is loaded, not compiled again; compiling
# is most of this suite's time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(RUN_DIR, "jit-cache"))

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_DIR = os.path.join(RUN_DIR, "smoke")
SMOKE_DEVICES = 2


def start_smoke_pretraining() -> None:
    """Starts the demo's smoke pretraining through the command line in the background, once per test run:
    the first worker to ask creates SMOKE_DIR and starts it; its exit status lands in SMOKE_DIR/status."""
    try:
        os.makedirs(SMOKE_DIR)
    except FileExistsError:
        return
    command = [sys.executable, "-m", "clipjax.main", f"--config={REPO_ROOT}/configs/demo.py:smoke"]
    command += [f"--workdir={SMOKE_DIR}/run", "--config.progress_bar=false"]
    quoted = " ".join(shlex.quote(part) for part in command)
    # The status file appears whole (renamed into place) only after the run has ended.
    script = f"{quoted} > stdout 2> stderr; echo $? > status.tmp; mv status.tmp status"
    # Two simulated devices, not the suite's eight: the same sharded step on a 2-core machine costs a third
    # less CPU time (the run shares the cores with the workers); the resume test continues it on eight.
    env = dict(os.environ, XLA_FLAGS=cpu_xla_flags(SMOKE_DEVICES))
    subprocess.Popen(["bash", "-c", script], cwd=SMOKE_DIR, env=env, start_new_session=True)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The smoke pretraining takes minutes: it starts with the run, beside the workers, rather than when its
    # first test comes up and stops a worker (the other one waiting for it too).
    if any("smoke_pretraining" in item.fixturenames for item in items) and not items[0].config.option.collectonly:
        start_smoke_pretraining()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _OWN_RUN_DIR and not hasattr(session.config, "workerinput"):  # the run's first process
        shutil.rmtree(RUN_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="session")
def smoke_pretraining() -> tuple[str, int, str]:
    """The demo's smoke pretraining through the command line, run once per test run (xdist workers share it):
    (workdir, exit status, stdout). Tests read its workdir (as config.init, or its files); one that trains on
    must copy it first."""
    start_smoke_pretraining()  # already running unless the test was not among those collected
    status = os.path.join(SMOKE_DIR, "status")
    deadline = time.monotonic() + 1200
    while not os.path.exists(status):
        if time.monotonic() > deadline:
            pytest.fail(f"the smoke pretraining has not finished after 20 minutes ({SMOKE_DIR})")
        time.sleep(0.5)
    with open(status) as f:
        code = int(f.read())
    with open(os.path.join(SMOKE_DIR, "stdout")) as f:
        stdout = f.read()
    if code:
        with open(os.path.join(SMOKE_DIR, "stderr")) as f:
            stdout += f.read()[-3000:]  # so that a failing test shows why the run failed
    return os.path.join(SMOKE_DIR, "run"), code, stdout
