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
def smoke_pretraining(tmp_path_factory) -> tuple[str, int, str]:
    """The demo's smoke pretraining through the command line, run once per session: (workdir, exit status,
    stdout). Tests read its workdir (as config.init, or its files); one that trains on must copy it first."""
    import contextlib
    import io

    from clipjax.main import main

    workdir = str(tmp_path_factory.mktemp("smoke"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            [f"--config={REPO_ROOT}/configs/demo.py:smoke", f"--workdir={workdir}", "--config.progress_bar=false"]
        )
    return workdir, status, out.getvalue()
