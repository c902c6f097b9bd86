"""Scaling-law fits: known laws recovered from noisy points drawn from them (numpy's generator), the
efficiency ratio of two known laws exact, the fit-free interpolation exact on points of a law, intervals that
cover the truth, and one-line errors for too few points."""

import numpy as np
import pytest

from clipjax.sweep.fits import (
    ScalingLaw,
    as_error,
    bootstrap_intervals,
    efficiency_ratio,
    fit_power_law,
    fit_saturating,
    interpolated_data_for_error,
)

SIZES = np.repeat(np.logspace(6, 9, 8), 3)  # 1M .. 1B samples, 3 seeds each


def noisy(law: ScalingLaw, relative: float, seed: int = 0) -> np.ndarray:
    """The law's errors at SIZES with multiplicative Gaussian noise of `relative` std."""
    return law(SIZES) * np.exp(np.random.default_rng(seed).normal(0.0, relative, SIZES.shape))


def test_the_power_law_is_recovered_with_honest_standard_errors():
    truth = ScalingLaw("power", a=40.0, alpha=0.3)
    law = fit_power_law(SIZES, noisy(truth, 0.02))
    assert law.alpha == pytest.approx(0.3, abs=4 * law.alpha_stderr) and law.alpha_stderr < 0.01
    assert law.a == pytest.approx(40.0, rel=0.1)
    exact = fit_power_law(SIZES, truth(SIZES))  # noiseless: exact to rounding
    assert exact.alpha == pytest.approx(0.3, rel=1e-9) and exact.a == pytest.approx(40.0, rel=1e-7)


def test_the_saturating_law_is_recovered_and_its_intervals_cover_the_truth():
    truth = ScalingLaw("saturating", a=30.0, alpha=0.35, e_inf=0.2)
    errors = noisy(truth, 0.01)
    law = fit_saturating(SIZES, errors)
    assert law.e_inf == pytest.approx(0.2, abs=0.03)
    assert law.alpha == pytest.approx(0.35, abs=0.05) and law.a == pytest.approx(30.0, rel=0.5)
    intervals = bootstrap_intervals(SIZES, errors, fit_saturating, samples=100)
    low, high = intervals["e_inf"]
    assert low <= 0.2 <= high and low < law.e_inf < high
    # The power law cannot bend: its residuals on the same points are far larger.
    power = fit_power_law(SIZES, errors)
    assert np.abs(np.log(power(SIZES) / errors)).mean() > 3 * np.abs(np.log(law(SIZES) / errors)).mean()


def test_the_efficiency_ratio_of_two_known_laws_is_exact():
    # Curve b reaches any error with 10x less data than a: E_b(D) = E_a(10 D).
    web = ScalingLaw("power", a=20.0, alpha=0.25)
    quality = ScalingLaw("power", a=20.0 * 10**-0.25, alpha=0.25)
    for error in (0.5, 0.3, 0.2):
        assert efficiency_ratio(web, quality, error) == pytest.approx(10.0, rel=1e-12)
    floored = ScalingLaw("saturating", a=5.0, alpha=0.5, e_inf=0.1)
    assert floored.data_for_error(0.1) == np.inf and floored.data_for_error(0.6) == pytest.approx(100.0)
    # Nearly flat laws: each size overflows a float (D = (a / E)^(1 / alpha)), their ratio does not. With the same
    # alpha the ratio is (a_a / a_b)^(1 / alpha): here exp(0.001 / 1e-5) = exp(100).
    flat_a, flat_b = ScalingLaw("power", a=0.9 * np.exp(0.001), alpha=1e-5), ScalingLaw("power", a=0.9, alpha=1e-5)
    assert flat_a.data_for_error(0.8) == np.inf
    assert efficiency_ratio(flat_a, flat_b, 0.8) == pytest.approx(np.exp(100.0), rel=1e-6)
    # A curve whose error rises with the data reaches no error by more data: no ratio rather than 0 or inf.
    rising = ScalingLaw("power", a=0.7, alpha=-0.01)
    assert np.isnan(rising.data_for_error(0.8)) and np.isnan(efficiency_ratio(web, rising, 0.3))
    # Fit-free: interpolation in log-log is exact on the points of a power law.
    sizes = np.logspace(6, 9, 4)
    assert interpolated_data_for_error(sizes, web(sizes), 0.3) == pytest.approx(web.data_for_error(0.3), rel=1e-9)
    assert np.isnan(interpolated_data_for_error(sizes, web(sizes), 0.01))  # beyond the measured range


def test_larger_is_better_metrics_are_fitted_as_errors_and_bad_points_are_named():
    np.testing.assert_allclose(as_error(np.array([0.25, 0.8]), larger_is_better=True), [0.75, 0.2])
    np.testing.assert_allclose(as_error(np.array([0.25, 0.8]), larger_is_better=False), [0.25, 0.8])
    with pytest.raises(ValueError, match="3 or more data sizes"):
        fit_saturating(np.array([1e6, 1e7]), np.array([0.5, 0.4]))
    with pytest.raises(ValueError, match="must be positive"):
        fit_power_law(np.array([1e6, 1e7]), np.array([0.5, 0.0]))
