"""What a sweep file declares: its runs (a config file, overrides, dependencies, coordinates) and its fit.

A sweep file is a Python file defining `get_sweep(arg: str | None) -> Sweep`, named as `path/to/file.py[:ARG]`
like a config file (ARG parsed by `clipjax.config.parse_arg`; a value listing several items joins them with
"+", e.g. `sizes=1000+4000,captions=real+synthetic`, which `items` splits). Each run is one
`python -m clipjax.main` command in its own subdirectory of the sweep's workdir (clipjax/sweep/runs.py).
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from typing import Any

from clipjax.config import load_file_function
from clipjax.errors import ConfigError

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ERROR_FORMS = ("auto", "1-metric", "metric")
_SUFFIXES = {"k": 10**3, "M": 10**6, "B": 10**9}


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep.

    name: its subdirectory of the sweep's workdir (letters, digits, "_", "-", ".").
    config: the config file with its argument, as `--config` takes it (a path relative to where the sweep runs).
    overrides: `--config.KEY=VALUE` settings by dotted key; values are written as Python literals.
    init_from: a run whose workdir is this run's `config.init` (a probe or finetuning of that pretraining); the
      run waits for it.
    after: other runs that must be done before this one starts.
    run_dirs: config keys set to the workdirs of other runs, a tuple of them per key (e.g. {"analyze.inits":
      ("clip_s0", "mae_s0")} for an analysis of both towers); the run waits for them.
    axes: the run's coordinates in the study (e.g. {"captions": "real", "samples": 1280000, "seed": 0}):
      the columns of points.csv.
    metric: the key of its summary (e.g. "eval/miou") that is its point in the study's fits; None: not a point.
    """

    name: str
    config: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str | None = None
    after: tuple[str, ...] = ()
    run_dirs: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    axes: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str | None = None

    @property
    def dependencies(self) -> tuple[str, ...]:
        """The runs that must be done first: `init_from`, `after` and those of `run_dirs`."""
        named = [name for names in self.run_dirs.values() for name in names]
        return tuple(dict.fromkeys(((self.init_from,) if self.init_from else ()) + tuple(self.after) + tuple(named)))


@dataclasses.dataclass(frozen=True)
class Fit:
    """How `python -m clipjax.sweep fit` reads the points.

    size: the axis holding the data size D (training records, or samples seen).
    curve: the axis whose values are separate curves (e.g. the caption policy).
    panels: axes with one figure panel and one set of fits per combination of values (e.g. the task).
    seed: the axis of repeats, whose spread the bootstrap draws from.
    error: what is fitted: "1-metric" (accuracies, mIoU, AP: larger is better), "metric" (errors, losses), or
      "auto" (from each run's task: its declared lower-is-better metrics are fitted as they are, its other
      declared metrics as 1 - metric; a metric the task does not declare must be configured).
    efficiency: (a, b) curve values: the data-efficiency ratio D_a(E*) / D_b(E*) is reported at the errors
      curve b measured (the paper's a = DataComp, b = DataCompDR: 12.8M of b ~ 128M of a, a ratio of 10).
    """

    size: str = "samples"
    curve: str = "captions"
    panels: tuple[str, ...] = ()
    seed: str = "seed"
    error: str = "auto"
    efficiency: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim a study checks: arm `better` beats arm `worse` (or ties, with at_least) on each of `tasks` (the
    Report's task axis values; () for every task both arms were measured on), by each task's metric and its
    direction. Task "attention" is the last block's mean attention distance of the Report's attention run
    (smaller: more local heads); only a claim naming it reads it."""

    text: str
    better: str
    worse: str
    tasks: tuple[str, ...] = ()
    at_least: bool = False


@dataclasses.dataclass(frozen=True)
class Report:
    """What `report.md` holds (clipjax/sweep/report.py): a table per value of the `task` axis with a row per
    value of the `arm` axis (in the order `arms`, then any other) over the `seed` axis, and one table of them
    all; the fit's picture; the attention-distance picture of run `attention` with a table of each arm's mean
    distance per block (every tower's arm and seed from the axes of the run whose workdir it is); and a line
    per claim (`efficiency_claim`: the fit's data-efficiency ratio above 1)."""

    title: str
    arm: str = "arm"
    task: str = "task"
    seed: str = "seed"
    arms: tuple[str, ...] = ()
    claims: tuple[Claim, ...] = ()
    efficiency_claim: str | None = None
    attention: str | None = None


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep file's declaration: its runs (in any order; they run in dependency order), its fit and its
    report."""

    runs: tuple[Run, ...]
    fit: Fit | None = None
    report: Report | None = None

    def __post_init__(self) -> None:
        if not self.runs or not all(isinstance(run, Run) for run in self.runs):
            raise ConfigError("a Sweep needs a tuple of one or more clipjax.sweep.spec.Run")
        check_runs(self.runs)
        if self.fit is not None and not isinstance(self.fit, Fit):
            raise ConfigError(f"Sweep(fit=...) takes a clipjax.sweep.spec.Fit, not {type(self.fit).__name__}")
        if self.report is not None and not isinstance(self.report, Report):
            raise ConfigError(f"Sweep(report=...) takes a clipjax.sweep.spec.Report, not {type(self.report).__name__}")
        if self.report is not None and self.report.attention and self.report.attention not in self.by_name():
            raise ConfigError(f"sweep report: its attention run {self.report.attention!r} is not a run of the sweep")
        if self.fit is not None and self.fit.error not in ERROR_FORMS:
            raise ConfigError(f"sweep fit: error={self.fit.error!r} is not one of {', '.join(ERROR_FORMS)}")

    def by_name(self) -> dict[str, Run]:
        return {run.name: run for run in self.runs}


def check_runs(runs: tuple[Run, ...]) -> None:
    """Raises a one-line ConfigError for a bad name, a repeated name, an unknown dependency or a cycle."""
    names: set[str] = set()
    for run in runs:
        if not isinstance(run.name, str) or not RUN_NAME.fullmatch(run.name):
            raise ConfigError(f"sweep run name {run.name!r}: use letters, digits, '_', '-' and '.' (it is a directory)")
        if run.name in names:
            raise ConfigError(f"sweep run name {run.name!r} appears twice; every run needs its own name")
        names.add(run.name)
    for run in runs:
        for dependency in run.dependencies:
            if dependency not in names:
                raise ConfigError(f"sweep run {run.name!r} depends on {dependency!r}, which the sweep does not define")
    dependency_order(runs)


def dependency_order(runs: tuple[Run, ...]) -> list[list[Run]]:
    """The runs in waves: each run's dependencies all lie in earlier waves; within a wave, the sweep's order.

    Raises:
      ConfigError: the dependencies form a cycle (the line names its runs).
    """
    placed: set[str] = set()
    waves: list[list[Run]] = []
    left = list(runs)
    while left:
        wave = [run for run in left if set(run.dependencies) <= placed]
        if not wave:
            raise ConfigError(f"sweep runs {', '.join(run.name for run in left)} depend on each other in a cycle")
        waves.append(wave)
        placed.update(run.name for run in wave)
        left = [run for run in left if run.name not in placed]
    return waves


def load_sweep(spec: str) -> Sweep:
    """Executes the sweep file of `spec` ("file.py[:ARG]") and returns its `get_sweep(ARG)`.

    Raises:
      ConfigError: no such file, no `get_sweep`, or a sweep that `check_runs` refuses.
    """
    get_sweep, arg = load_file_function(spec, "--sweep", "get_sweep", "configs/scaling/data_scaling.py")
    sweep = get_sweep(arg)
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"--sweep: get_sweep of {spec} returned {type(sweep).__name__}, not a clipjax.sweep Sweep")
    return sweep


def items(value: str, what: str) -> list[str]:
    """The "+"-joined items of a sweep argument ("real+synthetic" -> ["real", "synthetic"])."""
    parts = [part.strip() for part in str(value).split("+")]
    if not all(parts):
        raise ConfigError(f"argument {what}={value!r}: join its items with '+', e.g. a+b")
    return parts


def count(text: str, what: str) -> int:
    """A record count written plainly or with k / M / B ("1.28M" -> 1280000)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMB]?)", text.strip())
    if not match:
        raise ConfigError(f"argument {what}: {text!r} is not a count such as 12800, 12.8k or 1.28M")
    number, suffix = match.groups()
    value = decimal.Decimal(number) * _SUFFIXES.get(suffix, 1)  # exact: 1.28M is 1280000, not 1279999.99...
    if value != value.to_integral_value() or value < 1:
        raise ConfigError(f"argument {what}: {text!r} is not a whole positive count")
    return int(value)
