"""NYUv2 depth: metric sums and SILog loss against plain numpy oracles, Eigen crop bounds, mergeability, flip test."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.evals.depth_metrics import (
    DEPTH_METRICS,
    depth_metric_sums,
    depth_metrics_from_sums,
    eigen_crop,
    flip_average,
)
from clipjax.losses.depth import silog_loss

MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0


def numpy_metrics(pred, target, image_valid, eigen):
    """Mean over counted images of each metric, written plainly per image in float64 (the BTS eval loop)."""
    per_image = []
    for b in range(len(pred)):
        if not image_valid[b]:
            continue
        p = np.clip(pred[b].astype(np.float64), MIN_DEPTH, MAX_DEPTH)
        t = target[b].astype(np.float64)
        mask = (t > MIN_DEPTH) & (t < MAX_DEPTH)
        if eigen:
            mask &= eigen_crop(*t.shape)
        if not mask.any():
            continue
        p, t = p[mask], t[mask]
        thresh = np.maximum(p / t, t / p)
        per_image.append(
            [
                np.mean(np.abs(p - t) / t),
                np.mean((p - t) ** 2 / t),
                np.sqrt(np.mean((p - t) ** 2)),
                np.sqrt(np.mean((np.log(p) - np.log(t)) ** 2)),
                np.mean(np.abs(np.log10(p) - np.log10(t))),
                np.mean(thresh < 1.25),
                np.mean(thresh < 1.25**2),
                np.mean(thresh < 1.25**3),
            ]
        )
    return dict(zip(DEPTH_METRICS, np.mean(per_image, axis=0))), len(per_image)


def numpy_silog(pred, target, valid, lambd):
    d = np.log(pred[valid].astype(np.float64)) - np.log(target[valid].astype(np.float64))
    return np.sqrt(np.mean(d**2) - lambd * np.mean(d) ** 2)


def random_batch(seed=0, batch=6, height=24, width=32):
    """Depth in (0.5, 12) m with holes (0) and far pixels (> 10 m); image 4 is padding, image 5 has no depth."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.5, 12.0, (batch, height, width)).astype(np.float32)
    target[rng.random(target.shape) < 0.2] = 0.0
    pred = (target * rng.uniform(0.6, 1.5, target.shape) + rng.uniform(-0.3, 0.3, target.shape)).astype(np.float32)
    pred[0, 0, :4] = [-1.0, 0.0, 50.0, np.inf]  # clipped to [min_depth, max_depth] first
    target[5] = 0.0
    image_valid = np.array([True] * 4 + [False, True])
    target[4] = np.nan  # a padding image may hold anything
    return pred, target, image_valid


def metrics(*args, **kwargs):
    return depth_metrics_from_sums(np.asarray(jax.jit(depth_metric_sums, static_argnames="eigen")(*args, **kwargs)))


@pytest.mark.parametrize("eigen", [True, False])
def test_metrics_match_the_numpy_oracle(eigen):
    pred, target, image_valid = random_batch()
    expected, count = numpy_metrics(pred, target, image_valid, eigen)
    sums = np.asarray(depth_metric_sums(pred, target, image_valid, eigen=eigen))
    assert sums.dtype == np.float32 and sums.shape == (len(DEPTH_METRICS) + 1,)
    assert sums[-1] == count == 4  # padding image 4 and empty image 5 do not count
    got = depth_metrics_from_sums(sums, prefix="nyu")
    assert list(got) == [f"nyu/{name}" for name in DEPTH_METRICS]
    for name in DEPTH_METRICS:
        np.testing.assert_allclose(got[f"nyu/{name}"], expected[name], rtol=1e-5, err_msg=name)


def test_sums_merge_by_addition_across_batches():
    pred, target, image_valid = random_batch(seed=1)
    whole = depth_metric_sums(pred, target, image_valid)
    halves = depth_metric_sums(pred[:3], target[:3], image_valid[:3]) + depth_metric_sums(
        pred[3:], target[3:], image_valid[3:]
    )
    np.testing.assert_allclose(np.asarray(halves), np.asarray(whole), rtol=1e-6)
    expected, _ = numpy_metrics(pred, target, image_valid, eigen=True)
    got = depth_metrics_from_sums(np.asarray(halves, np.float64))
    for name in DEPTH_METRICS:
        np.testing.assert_allclose(got[f"eval/{name}"], expected[name], rtol=1e-5, err_msg=name)


def test_eigen_crop_bounds():
    mask = eigen_crop(480, 640)
    assert mask.shape == (480, 640) and mask.dtype == bool
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (45, 471, 41, 601)
    assert mask.sum() == (471 - 45) * (601 - 41)
    # Half size: each bound halves and rounds half up (22.5 -> 23, 235.5 -> 236, 20.5 -> 21, 300.5 -> 301).
    half = eigen_crop(240, 320)
    expected = np.zeros((240, 320), bool)
    expected[23:236, 21:301] = True
    np.testing.assert_array_equal(half, expected)
    with pytest.raises(ValueError):
        eigen_crop(0, 640)


def test_known_values():
    rng = np.random.default_rng(2)
    target = rng.uniform(0.5, 4.0, (2, 8, 8)).astype(np.float32)
    valid = np.ones(2, bool)
    same = metrics(target, target, valid, eigen=False)
    assert same["eval/abs_rel"] == 0 and same["eval/rmse"] == 0 and same["eval/delta1"] == 1
    doubled = metrics(2 * target, target, valid, eigen=False)
    assert doubled["eval/delta1"] == 0  # every ratio is 2, not below 1.25, 1.5625 or 1.953
    assert doubled["eval/delta3"] == 0 and doubled["eval/delta2"] == 0
    np.testing.assert_allclose(doubled["eval/abs_rel"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(doubled["eval/log10"], math.log10(2), rtol=1e-6)

    mask = np.ones(target.shape, bool)
    np.testing.assert_allclose(float(silog_loss(2 * target, target, mask, lambd=1.0)), 0.0, atol=1e-5)
    np.testing.assert_allclose(float(silog_loss(2 * target, target, mask)), math.sqrt(0.5) * math.log(2), rtol=1e-5)


def test_no_counted_image_raises():
    pred, target, _ = random_batch()
    sums = np.asarray(depth_metric_sums(pred, target, np.zeros(len(pred), bool)))
    assert not sums.any()
    with pytest.raises(ValueError, match="no image had a valid depth pixel"):
        depth_metrics_from_sums(sums)


@pytest.mark.parametrize("lambd", [0.0, 0.5, 0.85, 1.0])
def test_silog_matches_the_numpy_oracle(lambd):
    pred, target, _ = random_batch(seed=3)
    pred = np.abs(pred) + 0.1  # the loss needs pred > 0 where valid
    pred[0, 0, 3] = 5.0  # replace the inf
    valid = (target > 0) & (target < 10) & np.isfinite(target)
    got = jax.jit(silog_loss, static_argnames="lambd")(pred, target, valid, lambd=lambd)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), numpy_silog(pred, target, valid, lambd), rtol=1e-5)
    # A bfloat16 prediction is computed in float32: the same as its float32 upcast.
    low = jnp.asarray(pred, jnp.bfloat16)
    got = silog_loss(low, target, valid, lambd=lambd)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), numpy_silog(np.asarray(low, np.float32), target, valid, lambd), rtol=1e-5)


def test_silog_gradients_are_finite_and_zero_off_the_mask():
    pred, target, _ = random_batch(seed=4)
    pred = np.abs(pred) + 0.1  # the loss needs pred > 0 where valid
    pred[0, 0, 3] = 5.0  # replace the inf
    pred[:, :, 0] = 0.0  # log(0) and nan below would poison the gradient if masked after the log
    pred[:, :, 1] = np.nan
    target[:, :, 2] = np.inf
    valid = (target > 0) & (target < 10) & np.isfinite(target)
    valid[:, :, :2] = False
    loss, grad = jax.jit(jax.value_and_grad(silog_loss))(pred, target, valid)
    assert np.isfinite(float(loss)) and float(loss) > 0
    grad = np.asarray(grad)
    assert np.isfinite(grad).all() and not grad[~valid].any() and grad[valid].any()

    # pred == target: the sqrt argument is 0, clamped, so the gradient stays finite.
    loss, grad = jax.value_and_grad(silog_loss)(target, target, valid)
    assert float(loss) < 1e-5 and np.isfinite(np.asarray(grad)).all()

    none = np.zeros_like(valid)
    loss, grad = jax.jit(jax.value_and_grad(silog_loss))(pred, target, none)
    assert float(loss) == 0.0 and not np.asarray(grad).any()


def test_flip_average_by_hand():
    images = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)

    def predict(x):
        # Not flip-equivariant: depends on the column index and on the first channel.
        return x[..., 0] + jnp.arange(3, dtype=jnp.float32)

    got = np.asarray(flip_average(predict, jnp.asarray(images)))
    red = images[..., 0]
    # predict(flipped) = red[:, :, ::-1] + [0, 1, 2]; flipped back = red + [2, 1, 0]; mean = red + 1.
    np.testing.assert_allclose(got, red + 1.0)
    assert got.dtype == np.float32 and got.shape == (2, 2, 3)
