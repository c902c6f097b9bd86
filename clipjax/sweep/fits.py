"""Scaling-law fits of a study's points (error E against data size D), the paper's Fig. 2 analysis.

Two laws per curve (e.g. per caption policy):
  power law    E = A * D^-alpha              least squares on log E = log A - alpha log D
  saturating   E = E_inf + A * D^-alpha      scipy's bounded curve_fit, started from the power law's fit
with standard errors from the fits' covariances and bootstrap intervals over seeds (each size's seeds drawn
again with replacement). Two curves compare by their data efficiency at an error E*: D_a(E*) / D_b(E*), from
the fitted laws inverted, and fit-free by interpolating each curve's points linearly in log-log.

Metrics where larger is better (mIoU, AP, top-1) are fitted as their error 1 - metric (`as_error`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import numpy as np
import scipy.optimize

_LOG_MAX = math.log(np.finfo(np.float64).max)  # exp() of more overflows


@dataclasses.dataclass(frozen=True)
class ScalingLaw:
    """E(D) = e_inf + a * D^-alpha (e_inf = 0 for a pure power law), with standard errors (nan where the fit
    gives none) and the law's kind ("power" or "saturating")."""

    kind: str
    a: float
    alpha: float
    e_inf: float = 0.0
    a_stderr: float = float("nan")
    alpha_stderr: float = float("nan")
    e_inf_stderr: float = float("nan")

    def __call__(self, sizes: np.ndarray) -> np.ndarray:
        """float [n] errors at data sizes [n]."""
        return self.e_inf + self.a * np.asarray(sizes, np.float64) ** -self.alpha

    def log_data_for_error(self, error: float) -> float:
        """log of the data size at which the law reaches `error`: inf where it never does (error <= e_inf), nan
        for a law whose error does not fall with data (alpha or a <= 0). In logs: a nearly flat law (alpha ~
        1e-6) puts that size far beyond a float's range."""
        if self.a <= 0 or self.alpha <= 0:
            return math.nan
        if error <= self.e_inf:
            return math.inf
        return (math.log(self.a) - math.log(error - self.e_inf)) / self.alpha

    def data_for_error(self, error: float) -> float:
        """The data size at which the law reaches `error` (inf where it never does, or beyond a float; nan for a
        law whose error does not fall with data)."""
        log_size = self.log_data_for_error(error)
        return math.exp(log_size) if not log_size >= _LOG_MAX else math.inf


def as_error(values: np.ndarray, larger_is_better: bool) -> np.ndarray:
    """What is fitted: 1 - metric for metrics where larger is better (accuracies, mIoU, AP), else the metric."""
    values = np.asarray(values, np.float64)
    return 1.0 - values if larger_is_better else values


def _checked(sizes: np.ndarray, errors: np.ndarray, least: int) -> tuple[np.ndarray, np.ndarray]:
    sizes, errors = np.asarray(sizes, np.float64), np.asarray(errors, np.float64)
    if sizes.shape != errors.shape or sizes.ndim != 1:
        raise ValueError(f"sizes {sizes.shape} and errors {errors.shape} must be the same 1-D shape")
    if len(np.unique(sizes)) < least:
        raise ValueError(f"a fit needs points at {least} or more data sizes, got {len(np.unique(sizes))}")
    if np.any(sizes <= 0) or np.any(errors <= 0):
        raise ValueError("data sizes and errors must be positive (fit 1 - metric for accuracies)")
    return sizes, errors


def fit_power_law(sizes: np.ndarray, errors: np.ndarray) -> ScalingLaw:
    """E = A * D^-alpha by least squares in log-log. sizes, errors: float [n] (repeats: one per seed)."""
    sizes, errors = _checked(sizes, errors, 2)
    design = np.stack([np.ones_like(sizes), -np.log(sizes)], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.log(errors), rcond=None)
    log_a, alpha = coef
    stderr = np.full(2, np.nan)
    if len(sizes) > 2:  # the residual variance needs a degree of freedom
        residual = np.log(errors) - design @ coef
        covariance = residual @ residual / (len(sizes) - 2) * np.linalg.inv(design.T @ design)
        stderr = np.sqrt(np.diag(covariance))
    a = float(np.exp(log_a))
    return ScalingLaw("power", a, float(alpha), 0.0, a_stderr=a * stderr[0], alpha_stderr=float(stderr[1]))


def fit_saturating(sizes: np.ndarray, errors: np.ndarray) -> ScalingLaw:
    """E = E_inf + A * D^-alpha by bounded nonlinear least squares (0 <= E_inf < min E, A > 0, 0 < alpha <
    5), fitted in log E so that every decade of error weighs alike, started from the power law's fit.

    Raises:
      ValueError: fewer than 3 data sizes (three parameters), or the fit does not converge.
    """
    sizes, errors = _checked(sizes, errors, 3)
    start = fit_power_law(sizes, errors)
    scale = float(np.exp(np.mean(np.log(sizes))))  # D in units of its geometric mean: A stays near the errors

    def law(d: np.ndarray, e_inf: float, log_a: float, alpha: float) -> np.ndarray:
        return np.log(e_inf + np.exp(log_a) * d**-alpha)

    lower, upper = [0.0, -50.0, 1e-6], [float(errors.min()) * (1 - 1e-9), 50.0, 5.0]
    # The power law's A and alpha (D rescaled), and a floor inside its bounds (the power law's is 0).
    alpha0 = min(max(start.alpha, 1e-3), 4.9)
    initial = [0.1 * float(errors.min()), np.log(start.a) - alpha0 * np.log(scale), alpha0]
    try:
        with warnings.catch_warnings():
            # Three sizes fit three parameters exactly: no covariance, which the standard errors report as nan.
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
            params, covariance = scipy.optimize.curve_fit(
                law, sizes / scale, np.log(errors), p0=initial, bounds=(lower, upper), maxfev=20_000
            )
    except RuntimeError as error:
        raise ValueError(f"the saturating fit did not converge: {error}") from None
    e_inf, log_a, alpha = params
    stderr = np.sqrt(np.diag(covariance)) if np.all(np.isfinite(covariance)) else np.full(3, np.nan)
    a = float(np.exp(log_a) * scale**alpha)  # back to D in its own units
    return ScalingLaw(
        "saturating", a, float(alpha), float(e_inf),
        a_stderr=a * float(stderr[1]), alpha_stderr=float(stderr[2]), e_inf_stderr=float(stderr[0]),
    )  # fmt: skip


def bootstrap_intervals(
    sizes: np.ndarray,
    errors: np.ndarray,
    fit: Callable[[np.ndarray, np.ndarray], ScalingLaw],
    *,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the law's parameters ({"a", "alpha", "e_inf"} -> (low, high)) over `samples`
    refits, each on every size's points (its seeds) drawn again with replacement. Refits that fail are left
    out; an interval over none of them is (nan, nan), and so is every interval when no size has two or more
    seeds (redrawing single points gives the same points back: no spread to measure)."""
    sizes, errors = np.asarray(sizes, np.float64), np.asarray(errors, np.float64)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(sizes == size) for size in np.unique(sizes)]
    if max(len(group) for group in groups) < 2:
        return {name: (np.nan, np.nan) for name in ("a", "alpha", "e_inf")}
    drawn: dict[str, list[float]] = {"a": [], "alpha": [], "e_inf": []}
    # A draw is a multiset of points per size, so few seeds give few distinct draws (3 seeds at one size and 1
    # at the others: 10): each is fitted once. Same laws, same intervals; a study's fit takes seconds, not minutes.
    laws: dict[tuple, ScalingLaw | None] = {}
    for _ in range(samples):
        index = np.concatenate([np.sort(rng.choice(group, len(group))) for group in groups])
        key = tuple(index)
        if key not in laws:
            try:
                laws[key] = fit(sizes[index], errors[index])
            except ValueError:
                laws[key] = None
        law = laws[key]
        if law is None:
            continue
        for name in drawn:
            drawn[name].append(getattr(law, name))
    tail = 100 * (1 - level) / 2
    return {
        name: tuple(float(q) for q in np.percentile(values, [tail, 100 - tail])) if values else (np.nan, np.nan)
        for name, values in drawn.items()
    }


def efficiency_ratio(law_a: ScalingLaw, law_b: ScalingLaw, error: float) -> float:
    """D_a(E*) / D_b(E*): how many times more data curve a needs than curve b to reach `error` (the paper:
    12.8M DataCompDR samples ~ 128M DataComp ones, a ratio of 10 with a = DataComp)."""
    log_a, log_b = law_a.log_data_for_error(error), law_b.log_data_for_error(error)
    if math.isnan(log_a) or math.isnan(log_b) or (math.isinf(log_a) and math.isinf(log_b)):
        return math.nan  # a law that does not improve with data, or neither reaches the error: no ratio
    log_ratio = log_a - log_b  # in logs: each size alone may overflow where their ratio does not
    return math.exp(log_ratio) if log_ratio < _LOG_MAX else math.inf


def interpolated_data_for_error(sizes: np.ndarray, errors: np.ndarray, error: float) -> float:
    """Fit-free: the data size at `error` by linear interpolation of the curve's mean error per size in
    log-log (nan outside the measured range, where only a fit can say)."""
    sizes, errors = _checked(sizes, errors, 2)
    unique = np.unique(sizes)
    means = np.array([errors[sizes == size].mean() for size in unique])
    log_d, log_e, target = np.log(unique), np.log(means), np.log(error)
    for i in range(len(unique) - 1):
        low, high = sorted((log_e[i], log_e[i + 1]))
        if low <= target <= high and log_e[i] != log_e[i + 1]:
            t = (target - log_e[i]) / (log_e[i + 1] - log_e[i])
            return float(np.exp(log_d[i] + t * (log_d[i + 1] - log_d[i])))
    return float("nan")
