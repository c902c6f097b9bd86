"""A sweep's runs on disk: each run's command line, its state, and running it as a `clipjax.main` process.

Each run lives in `<sweep workdir>/<run name>/`, the workdir of its command. A run is done when its workdir holds
the summary.json that `clipjax.main` writes on finishing (so runs finished by a cluster job count too); a run
the sweep started and saw fail has its exit status in sweep_status.json; a run with a config.json but neither
was started and stopped (preempted, or killed with the sweep) and resumes from its checkpoints when run again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

from clipjax.sweep.spec import Run
from clipjax.train.workdir import SUMMARY_FILE

STATUS_FILE = "sweep_status.json"  # the last exit status the sweep saw, with the run's last words
LOG_FILE = "sweep.log"  # the run's stdout and stderr, appended on every attempt
LOCK_FILE = "sweep.lock"  # held by the sweep process running the run
COMPILATION_CACHE = "compilation_cache"  # shared by the sweep's runs: runs of the same shapes compile once
STOPPED = 75  # clipjax.main's exit status after SIGTERM / SIGINT and a saved checkpoint


@dataclasses.dataclass(frozen=True)
class RunState:
    """state: "done", "changed" (finished with other arguments), "failed", "started" or "pending"; detail:
    what `--list` shows beside it."""

    state: str
    detail: str = ""


def run_directory(workdir: str, name: str) -> str:
    """The workdir of run `name` of the sweep in `workdir` (absolute)."""
    return os.path.join(os.path.abspath(workdir), name)


def clipjax_arguments(run: Run, workdir: str) -> list[str]:
    """The run's `python -m clipjax.main` arguments: its config, workdir, config.init from `init_from`, the
    workdirs of `run_dirs`, the sweep's shared compilation cache and no progress bar (its output goes to a log;
    unless the run sets either) and its overrides, as Python literals."""
    overrides = dict(run.overrides)
    if run.init_from:
        overrides["init"] = run_directory(workdir, run.init_from)
    for key, names in run.run_dirs.items():
        overrides[key] = tuple(run_directory(workdir, name) for name in names)
    overrides.setdefault("compilation_cache_dir", os.path.join(os.path.abspath(workdir), COMPILATION_CACHE))
    overrides.setdefault("progress_bar", False)
    return [
        f"--config={run.config}",
        f"--workdir={run_directory(workdir, run.name)}",
        *(f"--config.{key}={literal(value)}" for key, value in overrides.items()),
    ]


def literal(value: Any) -> str:
    """A setting as `--config.KEY=` takes it: text as it is, tuples and lists as Python literals."""
    return repr(value) if isinstance(value, (list, tuple)) else str(value)


def read_summary(workdir: str, name: str) -> dict[str, Any] | None:
    """The summary.json of run `name` ({"task": str, "summary": {metric: value}}), or None if not done."""
    path = os.path.join(run_directory(workdir, name), SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_state(run: Run, workdir: str) -> RunState:
    """Where `run` of the sweep in `workdir` stands (see the module docstring)."""
    directory = run_directory(workdir, run.name)
    summary = read_summary(workdir, run.name)
    if summary is not None:
        expected = clipjax_arguments(run, workdir)
        # In any order: each override sets its own key, so a sweep file that lists them otherwise runs the same.
        if sorted(summary.get("arguments", expected)) != sorted(expected):
            return RunState("changed", "finished with other settings than the sweep gives it now; runs again")
        value = summary["summary"].get(run.metric) if run.metric else None
        return RunState("done", f"{run.metric}={value:.4g}" if isinstance(value, (int, float)) else "")
    status_path = os.path.join(directory, STATUS_FILE)
    if os.path.isfile(status_path):
        with open(status_path, encoding="utf-8") as f:
            status = json.load(f)
        if status["exit_status"] not in (0, STOPPED) and not status.get("stopped"):
            return RunState("failed", f"exit {status['exit_status']}: {status['message']}")
    if os.path.isfile(os.path.join(directory, "config.json")):
        return RunState("started", "resumes from its checkpoints")
    return RunState("pending")


class Interrupted(Exception):
    """SIGTERM / SIGINT reached the sweep; the run going then (if any) was stopped, after saving a checkpoint."""


class Busy(Exception):
    """Another sweep process is running this run (it holds the run's lock)."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal closed


class StopRequests:
    """While entered: SIGTERM, SIGINT and SIGHUP are recorded rather than ending the sweep, and passed on as
    SIGTERM to the run going (`child`), which saves a checkpoint and exits 75. `check()` raises Interrupted
    once one came."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.child: subprocess.Popen | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        self._previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, _frame: Any) -> None:
        self.received.append(signum)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def check(self, during: str = "") -> None:
        if self.received:
            raise Interrupted(f"{signal.Signals(self.received[0]).name}{' during ' + during if during else ''}")


def execute(run: Run, workdir: str, stops: StopRequests) -> tuple[int, str]:
    """Runs `run` as a `python -m clipjax.main` process, its output appended to its sweep.log; records the exit
    status in its sweep_status.json.

    Returns:
      (exit status, its last words: the error line, or the log's last line).

    Raises:
      Interrupted: a stop signal arrived (`stops`); it was passed on to the run, which saved a checkpoint and
        stopped.
      Busy: another sweep process holds the run's lock (it is running it).
    """
    stops.check()
    directory = run_directory(workdir, run.name)
    os.makedirs(directory, exist_ok=True)
    argv = [sys.executable, "-m", "clipjax.main", *clipjax_arguments(run, workdir)]
    log_path = os.path.join(directory, LOG_FILE)
    with open(os.path.join(directory, LOCK_FILE), "w") as lock, open(log_path, "a", encoding="utf-8") as log:
        try:  # released when the file closes, also when this process dies
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another sweep is running {run.name}") from None
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        log.flush()
        start = time.perf_counter()
        # Its own session: a Ctrl-C at the terminal reaches the sweep only, which passes on one SIGTERM (a second
        # Ctrl-C would make the run stop without saving). It inherits the lock, so that the lock is held for as
        # long as the run goes, even if this process dies first.
        stops.child = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock.fileno(),)
        )
        if stops.received:  # a signal came while the process was starting
            stops.child.send_signal(signal.SIGTERM)
        try:
            status = stops.child.wait()
        finally:
            stops.child = None
    message = last_words(log_path)
    temporary = os.path.join(directory, STATUS_FILE + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        # "stopped": the sweep was asked to stop and stopped the run (which may have died of the signal before
        # it could save, exit -15): not a failure; the run continues from its last checkpoint next time.
        seconds = time.perf_counter() - start
        json.dump({"exit_status": status, "stopped": bool(stops.received), "message": message, "seconds": seconds}, f)
    os.replace(temporary, os.path.join(directory, STATUS_FILE))
    stops.check(f"run {run.name} (exit {status})")
    return status, message


def last_words(log_path: str) -> str:
    """The last "error: ..." / "stopped: ..." line of the log's last attempt, else its traceback's last
    exception line ("ValueError: ..."), else its last line."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip() for line in f.read().rsplit("\n# ", 1)[-1].splitlines() if line.strip()]
    for pattern in (r"(error|stopped): ", r"[A-Za-z_.]*(Error|Exception|Interrupt)\b"):
        found = [line for line in lines if re.match(pattern, line)]
        if found:
            return found[-1]
    return lines[-1] if lines else ""
