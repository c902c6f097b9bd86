"""Scaling-law studies from the command line.

  python -m clipjax.sweep --sweep=configs/scaling/FILE.py[:ARGS] --workdir=DIR [--list | --emit=shell|slurm|tpu]
  python -m clipjax.sweep fit --workdir=DIR [--bootstrap=1000]      # also writes the report, if declared

The first form runs the sweep's runs that are not done, in dependency order, each as a `python -m clipjax.main`
process in DIR/<run name>/ (its output in DIR/<run name>/sweep.log). Running it again continues: done runs
are skipped, a stopped run resumes from its checkpoints, a failed one is tried again. A failed run is reported
and the runs that do not depend on it go on. --list shows each run's state instead; --emit writes the commands
as a script (DIR/sweep.<kind>.sh) for a shell, SLURM job arrays or a TPU VM queue instead of running them.
Each form records the sweep in DIR/sweep.json, which `fit` reads.

`fit` collects the done runs' metrics into DIR/points.csv, fits the scaling laws (DIR/fits.json), draws
DIR/scaling.png and prints the table. After running, a sweep that declares a Fit is fitted so, and one that
declares a Report writes DIR/report.md (clipjax/sweep/report.py), from the runs done.

Exit status: 0 every run done (fit: written); 1 a run failed or is blocked by one, or another problem (one
line); 2 a bad sweep file or flag (one line); 75 stopped by SIGTERM / SIGINT (run the same command again).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from clipjax.errors import ConfigError, UserError

USAGE = (
    "usage: python -m clipjax.sweep --sweep=FILE.py[:ARGS] --workdir=DIR [--list | --emit=shell|slurm|tpu]  or  "
    "python -m clipjax.sweep fit --workdir=DIR [--bootstrap=N]"
)
SWEEP_FILE = "sweep.json"
EXIT_FAILED, EXIT_STOPPED = 1, 75


def parse_flags(argv: Sequence[str], allowed: dict[str, bool]) -> dict[str, str]:
    """`--name=value` (or `--name value`; a bare `--name` for the flags `allowed` maps to False: no value) into
    {name: value}. Raises ConfigError on anything else."""
    flags: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or name not in allowed:
            raise ConfigError(f"unexpected argument {arg!r}; {USAGE}")
        if not allowed[name]:
            flags[name] = "true"
            continue
        if not sep:
            if not args or args[0].startswith("--"):
                raise ConfigError(f"--{name} needs a value; {USAGE}")
            value = args.pop(0)
        flags[name] = value
    return flags


def save_sweep(workdir: str, spec: str, sweep: Any) -> None:
    """DIR/sweep.json: the sweep's file and argument, its runs and its fit, as `fit` reads them back."""
    os.makedirs(workdir, exist_ok=True)
    document = {
        "sweep": spec,
        "runs": [dataclasses.asdict(run) for run in sweep.runs],
        "fit": dataclasses.asdict(sweep.fit) if sweep.fit else None,
        "report": dataclasses.asdict(sweep.report) if sweep.report else None,
    }
    path = os.path.join(workdir, SWEEP_FILE)
    try:
        text = json.dumps(document, indent=2, default=_plain) + "\n"
    except TypeError as e:
        raise ConfigError(
            f"sweep {spec}: its runs' overrides and axes must be numbers, text, lists or dicts ({e})"
        ) from None
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _plain(value: Any) -> Any:
    """numpy scalars (a sweep file's np.int64 sizes) as the Python numbers they hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def load_saved_sweep(workdir: str) -> tuple[str, Any]:
    """(spec, Sweep) from DIR/sweep.json. Raises a one-line UserError when DIR holds no sweep."""
    from clipjax.sweep.spec import Claim, Fit, Report, Run, Sweep

    path = os.path.join(workdir, SWEEP_FILE)
    if not os.path.isfile(path):
        raise UserError(
            f"{workdir} holds no {SWEEP_FILE}: run `python -m clipjax.sweep --sweep=... --workdir={workdir}` first"
        )
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    runs = tuple(
        Run(
            **{
                **run,
                "after": tuple(run["after"]),
                "run_dirs": {k: tuple(v) for k, v in run.get("run_dirs", {}).items()},
            }
        )
        for run in document["runs"]
    )  # JSON's lists back to the tuples a Run holds
    fit = document["fit"]
    if fit is not None:
        fit = Fit(**{**fit, "panels": tuple(fit["panels"]),
                     "efficiency": tuple(fit["efficiency"]) if fit["efficiency"] else None})  # fmt: skip
    report = document.get("report")
    if report is not None:
        claims = tuple(Claim(**{**c, "tasks": tuple(c["tasks"])}) for c in report["claims"])
        report = Report(**{**report, "arms": tuple(report["arms"]), "claims": claims})
    return document["sweep"], Sweep(runs, fit, report)


def run_sweep(sweep: Any, workdir: str) -> int:
    """Runs every run not done, in dependency order; prints one line per run as it goes and the ones not done
    at the end. Returns the exit status."""
    from clipjax.sweep.runs import Interrupted, StopRequests

    try:
        with StopRequests() as stops:
            return _run_in_order(sweep, workdir, stops)
    except Interrupted as e:
        print(f"stopped: {e}; run the same command again to continue", file=sys.stderr, flush=True)
        return EXIT_STOPPED


def _run_in_order(sweep: Any, workdir: str, stops: Any) -> int:
    from clipjax.sweep.runs import LOG_FILE, Busy, execute, run_directory, run_state
    from clipjax.sweep.spec import dependency_order

    order = [run for wave in dependency_order(sweep.runs) for run in wave]
    done = {run.name for run in order if run_state(run, workdir).state == "done"}
    not_done: dict[str, str] = {}
    for number, run in enumerate(order, 1):
        prefix = f"[{number}/{len(order)}] {run.name}:"
        if run.name in done:
            print(f"{prefix} done", flush=True)
            continue
        waiting = [d for d in run.dependencies if d not in done]
        if waiting:
            not_done[run.name] = f"blocked: {', '.join(waiting)} not done"
            print(f"{prefix} {not_done[run.name]}", flush=True)
            continue
        state = run_state(run, workdir)
        again = {"failed": " again", "started": " (resuming)", "changed": " again (its settings changed)"}.get(
            state.state, ""
        )
        print(f"{prefix} running{again}; log: {os.path.join(run_directory(workdir, run.name), LOG_FILE)}", flush=True)
        start = time.perf_counter()
        try:
            status, message = execute(run, workdir, stops)
        except Busy as e:
            not_done[run.name] = f"busy: {e}"
            print(f"{prefix} {not_done[run.name]}", flush=True)
            continue
        seconds = time.perf_counter() - start
        if status == 0:
            done.add(run.name)
            detail = run_state(run, workdir).detail
            print(f"{prefix} done in {seconds:.1f} s{' (' + detail + ')' if detail else ''}", flush=True)
        else:
            not_done[run.name] = f"failed (exit {status}): {message}"
            print(f"{prefix} {not_done[run.name]}", flush=True)
    if not_done:
        print(f"{len(done)} of {len(order)} runs done; not done:", file=sys.stderr)
        for name, why in not_done.items():
            print(f"  {name}: {why}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"every run of the sweep is done ({len(order)}); fit it with: python -m clipjax.sweep fit --workdir={workdir}"
    )
    return 0


def list_sweep(sweep: Any, workdir: str) -> int:
    """Prints each run's state, in dependency order."""
    from clipjax.sweep.runs import run_state
    from clipjax.sweep.spec import dependency_order

    order = [run for wave in dependency_order(sweep.runs) for run in wave]
    width = max(len(run.name) for run in order)
    counts: dict[str, int] = {}
    for run in order:
        state = run_state(run, workdir)
        counts[state.state] = counts.get(state.state, 0) + 1
        print(f"{run.name:<{width}}  {state.state:<8} {state.detail}".rstrip())
    print(", ".join(f"{count} {state}" for state, count in counts.items()))
    return 0


def emit_sweep(kind: str, spec: str, sweep: Any, workdir: str) -> int:
    """Writes DIR/sweep.<kind>.sh and says where."""
    from clipjax.sweep.emit import KINDS, emit
    from clipjax.sweep.runs import run_state

    if kind not in KINDS:
        raise ConfigError(f"--emit={kind!r} is not one of {', '.join(KINDS)}")
    done = {run.name for run in sweep.runs if run_state(run, workdir).state == "done"}
    path = os.path.join(workdir, f"sweep.{kind}.sh")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(emit(kind, spec, sweep.runs, done, workdir))
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}: {len(sweep.runs) - len(done)} runs ({len(done)} done are left out)")
    return 0


def fit_and_report(spec: str, sweep: Any, workdir: str, bootstrap: int = 1000, fitted: bool = False) -> None:
    """After running: the fits (when the sweep declares a Fit and some points are done; `fitted`: done already)
    and report.md (when it declares a Report), from whatever runs are done."""
    from clipjax.sweep.report import REPORT_FILE, write_report
    from clipjax.sweep.study import FITS_FILE, collect_points

    results = None
    if sweep.fit is not None and (fitted or collect_points(sweep.runs, sweep.fit, workdir)):
        if not fitted:
            fit_sweep(workdir, bootstrap)
        with open(os.path.join(workdir, FITS_FILE), encoding="utf-8") as f:
            results = json.load(f)["panels"]
    if sweep.report is not None:
        write_report(spec, sweep.runs, sweep.report, workdir, results)
        print(f"wrote {os.path.join(workdir, REPORT_FILE)}")


def fit_sweep(workdir: str, bootstrap: int) -> int:
    """Writes points.csv, fits.json and scaling.png for the sweep in `workdir` and prints the table."""
    from clipjax.sweep.scaling_plot import plot_scaling
    from clipjax.sweep.study import (
        FITS_FILE,
        PLOT_FILE,
        POINTS_FILE,
        collect_points,
        fit_points,
        format_table,
        write_fits,
        write_points,
    )

    spec, sweep = load_saved_sweep(workdir)
    if sweep.fit is None:
        raise ConfigError(f"sweep {spec} declares no Fit: say which axes are the size and the curves in its file")
    points = collect_points(sweep.runs, sweep.fit, workdir)
    wanted = sum(1 for run in sweep.runs if run.metric and sweep.fit.size in run.axes)
    if not points:
        raise UserError(f"no run of sweep {spec} with a metric is done yet ({wanted} will be points)")
    write_points(points, os.path.join(workdir, POINTS_FILE))
    results = fit_points(points, sweep.fit, bootstrap)
    write_fits(results, sweep.fit, os.path.join(workdir, FITS_FILE))
    plot_scaling(results, sweep.fit.size, os.path.join(workdir, PLOT_FILE))
    print(f"sweep {spec}: {len(points)} of {wanted} points done")
    print(format_table(results, sweep.fit))
    print(f"wrote {', '.join(os.path.join(workdir, name) for name in (POINTS_FILE, FITS_FILE, PLOT_FILE))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip())
        return 0
    try:
        if argv[:1] == ["fit"]:
            flags = parse_flags(argv[1:], {"workdir": True, "bootstrap": True})
            if "workdir" not in flags:
                raise ConfigError(f"fit needs --workdir; {USAGE}")
            try:
                bootstrap = int(flags.get("bootstrap", 1000))
            except ValueError:
                raise ConfigError(f"--bootstrap={flags['bootstrap']!r} is not a whole number") from None
            spec, sweep = load_saved_sweep(flags["workdir"])
            if sweep.fit is not None:
                fit_sweep(flags["workdir"], bootstrap)
            elif sweep.report is None:
                raise ConfigError(f"sweep {spec} declares neither a Fit nor a Report: nothing to fit or report")
            fit_and_report(spec, sweep, flags["workdir"], bootstrap, fitted=True)
            return 0
        flags = parse_flags(argv, {"sweep": True, "workdir": True, "list": False, "emit": True})
        if "sweep" not in flags or "workdir" not in flags:
            raise ConfigError(f"--sweep and --workdir are required; {USAGE}")
        if "list" in flags and "emit" in flags:
            raise ConfigError("--list and --emit each replace running the sweep: give one of them")
        from clipjax.sweep.spec import load_sweep

        spec, workdir = flags["sweep"], flags["workdir"]
        sweep = load_sweep(spec)
        save_sweep(workdir, spec, sweep)
        if "list" in flags:
            return list_sweep(sweep, workdir)
        if "emit" in flags:
            return emit_sweep(flags["emit"], spec, sweep, workdir)
        status = run_sweep(sweep, workdir)
        if status != EXIT_STOPPED:
            fit_and_report(spec, sweep, workdir)
        return status
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_status


if __name__ == "__main__":
    sys.exit(main())
