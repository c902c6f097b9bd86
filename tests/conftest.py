"""Test setup: 8 simulated CPU devices (set before JAX is imported) and shared helpers."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="session")
def smoke_pretraining(tmp_path_factory, worker_id) -> tuple[str, int, str]:
    """The demo's smoke pretraining through the command line, run once per test run (xdist workers share it):
    (workdir, exit status, stdout). Tests read its workdir (as config.init, or its files); one that trains on
    must copy it first."""
    import fcntl
    import json

    from tests.helpers import run_smoke_cli

    # Under xdist the base temp's parent is this run's, shared by its workers (pytest-xdist's recipe); alone,
    # the base temp itself.
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    workdir, result = root / "smoke", root / "smoke.json"
    with open(root / "smoke.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker trains, the others wait for its result
        if not result.exists():
            status, stdout = run_smoke_cli(REPO_ROOT, str(workdir))
            result.write_text(json.dumps({"status": status, "stdout": stdout}))
    saved = json.loads(result.read_text())
    return str(workdir), saved["status"], saved["stdout"]
