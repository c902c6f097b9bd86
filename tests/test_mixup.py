"""Mixup / CutMix / label smoothing and the classification loss and metrics, against numpy oracles."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.data.mixup import mix_batch, smooth_labels
from clipjax.losses.classification import soft_cross_entropy, topk_correct

NUM_CLASSES = 10
SMOOTHING = 0.1
OFF = SMOOTHING / NUM_CLASSES
ON = 1.0 - SMOOTHING + OFF


def numpy_smooth(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    out = np.full((len(labels), num_classes), smoothing / num_classes)
    out[np.arange(len(labels)), labels] += 1.0 - smoothing
    return out


def batch(size: int, side: int, channels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random normal images (no two pixels equal) and labels 0..size-1, so row i and its partner differ."""
    images = np.random.default_rng(seed).normal(size=(size, side, side, channels)).astype(np.float32)
    return images, np.arange(size, dtype=np.int32) % NUM_CLASSES


def lam_from_targets(targets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's lambda, from targets[i, y_i] = lam * ON + (1 - lam) * OFF (valid when y_i != partner's)."""
    own = targets[..., np.arange(len(labels)), labels]
    return (own - OFF) / (ON - OFF)


def vmapped(**kwargs):
    """mix_batch jitted and vmapped over keys: one compile evaluates many independent draws."""
    fn = functools.partial(mix_batch, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING, **kwargs)
    return jax.jit(jax.vmap(lambda key, x, y: fn(key, x, y), in_axes=(0, None, None)))


def keys(count: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), count)


# --------------------------------------------------------------------------------------------- smoothing


def test_smooth_labels_values_and_row_sums():
    labels = np.array([0, 3, 9, 3], np.int32)
    for smoothing in (0.0, 0.1, 0.5):
        got = np.asarray(smooth_labels(jnp.asarray(labels), NUM_CLASSES, smoothing))
        assert got.dtype == np.float32 and got.shape == (4, NUM_CLASSES)
        np.testing.assert_allclose(got, numpy_smooth(labels, NUM_CLASSES, smoothing), atol=1e-7)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(smooth_labels(jnp.asarray(labels), NUM_CLASSES, 0.0)).argmax(1), labels)


# --------------------------------------------------------------------------------------------- mix_batch


def test_prob_zero_returns_inputs_and_smoothed_labels():
    images, labels = batch(8, 8)
    out, targets = vmapped(prob=0.0)(keys(4), images, labels)
    np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(images, out.shape))
    np.testing.assert_allclose(
        np.asarray(targets), np.broadcast_to(numpy_smooth(labels, NUM_CLASSES, SMOOTHING), targets.shape), atol=1e-7
    )


def test_both_alphas_zero_never_mix():
    images, labels = batch(4, 4)
    out, targets = mix_batch(jax.random.key(0), images, labels, NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=0.0)
    np.testing.assert_array_equal(np.asarray(out), images)
    np.testing.assert_allclose(np.asarray(targets), numpy_smooth(labels, NUM_CLASSES, SMOOTHING), atol=1e-7)


def test_mixup_only_blends_with_reversed_batch():
    images, labels = batch(8, 8)
    out, targets = map(np.asarray, vmapped(cutmix_alpha=0.0)(keys(8), images, labels))
    lam = lam_from_targets(targets, labels)  # [seeds, B]
    np.testing.assert_allclose(lam, lam[:, :1].repeat(8, axis=1), atol=1e-6)  # one lambda for the whole batch
    assert np.all((lam > 0) & (lam < 1)) and np.ptp(lam[:, 0]) > 0.1  # really mixed, and differently per seed
    partner = labels[::-1]
    np.testing.assert_allclose(targets[:, np.arange(8), partner], (1 - lam) * ON + lam * OFF, atol=1e-6)
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    lam = lam[:, 0, None, None, None, None]
    np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], atol=1e-5)


def test_cutmix_only_pastes_one_rectangle_from_partner():
    side = 16
    images, labels = batch(8, side)
    images = images.astype(jnp.bfloat16)  # also checks the dtype is kept and pasted pixels are copied bit for bit
    out, targets = map(np.asarray, vmapped(mixup_alpha=0.0)(keys(32), images, labels))
    assert out.dtype == images.dtype and out.shape == (32, *images.shape) and targets.dtype == np.float32
    own, partner = images, images[::-1]
    nonempty = 0
    for seed in range(len(out)):
        from_own = np.all(out[seed] == own, axis=-1)  # [B, H, W]
        from_partner = np.all(out[seed] == partner, axis=-1)
        assert np.all(from_own | from_partner)  # every pixel copied exactly from one of the two
        box = from_partner[0]
        assert np.all(from_partner == box)  # the same box for every image in the batch
        rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
        area = 0
        if len(rows):
            nonempty += 1
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            rect = np.zeros_like(box)
            rect[y0:y1, x0:x1] = True
            np.testing.assert_array_equal(box, rect)  # one axis-aligned rectangle, nothing else
            area = (y1 - y0) * (x1 - x0)
            if y0 > 0 and x0 > 0 and y1 < side and x1 < side:  # unclipped: square (H == W) and even-sided
                assert y1 - y0 == x1 - x0 and (y1 - y0) % 2 == 0
        np.testing.assert_allclose(lam_from_targets(targets[seed], labels), 1 - area / side**2, atol=1e-6)
        np.testing.assert_allclose(targets[seed].sum(-1), 1.0, atol=1e-6)
    assert nonempty >= 24


DRAWS = 4000
STATS_PROB = 0.6


@pytest.fixture(scope="module")
def stats_batch():
    """8 constant images, image i all equal to i: image 0 (all 0) is mixed with image 7 (all 7)."""
    images = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None, None], (8, 16, 16, 1)).copy()
    return images, np.arange(8, dtype=np.int32)


@pytest.fixture(scope="module")
def many_draws(stats_batch):
    """DRAWS draws of the default recipe (mixup 0.8, cutmix 1.0, switch 0.5) at prob=STATS_PROB."""
    images, labels = stats_batch
    out, targets = map(np.asarray, vmapped(prob=STATS_PROB)(keys(DRAWS, seed=1), images, labels))
    partner_weight = out[:, 0, :, :, 0].reshape(DRAWS, -1) / 7  # per pixel of image 0, the weight on its partner
    changed = np.any(partner_weight != 0, axis=1)
    binary = np.all((partner_weight == 0) | (partner_weight == 1), axis=1)
    return {
        "out": out,
        "targets": targets,
        "weight": partner_weight,
        "changed": changed,
        "cutmix": changed & binary,
        "lam": lam_from_targets(targets, labels)[:, 0],
    }


def test_mix_and_switch_rates(many_draws):
    changed, cutmix = many_draws["changed"], many_draws["cutmix"]
    # The few CutMix draws whose box is empty look unmixed: about 0.5% of them here.
    assert abs(changed.mean() - STATS_PROB) < 0.03
    assert abs(cutmix.sum() / changed.sum() - 0.5) < 0.04  # switch_prob=0.5
    np.testing.assert_array_equal(many_draws["lam"][~changed], 1.0)
    np.testing.assert_allclose(many_draws["targets"].sum(-1), 1.0, atol=1e-6)


def test_mixup_lambda_is_beta(many_draws):
    mixup = many_draws["changed"] & ~many_draws["cutmix"]
    lam = many_draws["lam"][mixup]
    np.testing.assert_allclose(many_draws["weight"][mixup], 1 - lam[:, None].repeat(16 * 16, 1), atol=1e-6)
    # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2a + 1)).
    assert abs(lam.mean() - 0.5) < 0.03
    assert abs(lam.var() - 1 / (4 * 2.6)) < 0.01


def test_cutmix_lambda_matches_box_oracle(many_draws):
    side, cutmix = 16, many_draws["cutmix"]
    lam = many_draws["lam"][cutmix]
    np.testing.assert_allclose(lam, 1 - many_draws["weight"][cutmix].mean(axis=1), atol=1e-6)  # corrected lambda
    # numpy Monte Carlo of the clipped box with lambda ~ Beta(1, 1): the corrected lambda's mean.
    rng = np.random.default_rng(0)
    raw = rng.beta(1.0, 1.0, size=200_000)
    half = np.floor(side * np.sqrt(1 - raw)).astype(int) // 2
    cy, cx = rng.integers(0, side, size=(2, len(raw)))
    h = np.clip(cy + half, 0, side) - np.clip(cy - half, 0, side)
    w = np.clip(cx + half, 0, side) - np.clip(cx - half, 0, side)
    expected = 1 - (h * w / side**2)
    assert abs(lam.mean() - expected.mean()) < 0.03
    assert expected.mean() > 0.55  # clipping makes the corrected mean noticeably above Beta's 1/2


def test_jit_compiles_once_and_sharded_matches_unsharded(stats_batch, many_draws):
    """A batch sharded over 8 devices gives what the unsharded (vmapped) run gave for the same keys."""
    traces = []

    def fn(key, images, labels):
        traces.append(None)  # runs only while tracing
        return mix_batch(key, images, labels, NUM_CLASSES, label_smoothing=SMOOTHING, prob=STATS_PROB)

    fn = jax.jit(fn)
    images, labels = stats_batch
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8
    sharded_images = jax.device_put(images, NamedSharding(mesh, P("data")))
    sharded_labels = jax.device_put(labels, NamedSharding(mesh, P("data")))
    assert len(sharded_images.addressable_shards) == 8
    all_keys = keys(DRAWS, seed=1)
    # One seed of each outcome (unmixed, CutMix, Mixup) and two more of each mixing kind.
    chosen = [int(np.flatnonzero(~many_draws["changed"])[0])]
    chosen += np.flatnonzero(many_draws["cutmix"])[:3].tolist()
    chosen += np.flatnonzero(many_draws["changed"] & ~many_draws["cutmix"])[:3].tolist()
    for seed in chosen:
        out, targets = fn(all_keys[seed], sharded_images, sharded_labels)
        np.testing.assert_allclose(np.asarray(out), many_draws["out"][seed], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(targets), many_draws["targets"][seed], rtol=1e-6, atol=1e-7)
    assert len(traces) == 1


# --------------------------------------------------------------------------------------------- loss and metrics


def numpy_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_soft_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=(6, NUM_CLASSES))).astype(np.float32)
    targets = rng.dirichlet(np.ones(NUM_CLASSES), size=6).astype(np.float32)
    per_row = -(targets * numpy_log_softmax(logits)).sum(-1)
    got = soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), per_row.mean(), rtol=1e-5)
    # bfloat16 logits are upcast: the answer is the float32 loss of the rounded logits.
    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    got = soft_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), -(targets * numpy_log_softmax(rounded)).sum(-1).mean(), rtol=1e-5)
    # One-hot targets: ordinary cross-entropy.
    labels = rng.integers(0, NUM_CLASSES, size=6)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    expected = -numpy_log_softmax(logits)[np.arange(6), labels].mean()
    np.testing.assert_allclose(
        float(soft_cross_entropy(jnp.asarray(logits), jnp.asarray(one_hot))), expected, rtol=1e-5
    )


def test_soft_cross_entropy_mask_excludes_rows():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, NUM_CLASSES)).astype(np.float32)
    targets = rng.dirichlet(np.ones(NUM_CLASSES), size=6).astype(np.float32)
    keep = np.array([True, False, True, True, False, True])
    logits_with_garbage = logits.copy()
    logits_with_garbage[1] = np.nan  # a padded row must not leak into the mean
    per_row = -(targets * numpy_log_softmax(logits)).sum(-1)
    for mask in (keep, keep.astype(np.float32)):
        got = soft_cross_entropy(jnp.asarray(logits_with_garbage), jnp.asarray(targets), jnp.asarray(mask))
        np.testing.assert_allclose(float(got), per_row[keep].mean(), rtol=1e-5)
    none_kept = soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros(6, bool))
    assert float(none_kept) == 0.0
    # The gradient is finite, zero on the masked rows, and softmax - targets over the kept count elsewhere.
    grad = np.asarray(jax.grad(soft_cross_entropy)(jnp.asarray(logits_with_garbage), targets, jnp.asarray(keep)))
    np.testing.assert_array_equal(grad[~keep], 0.0)
    expected = (np.exp(numpy_log_softmax(logits)) - targets)[keep] / keep.sum()
    np.testing.assert_allclose(grad[keep], expected, atol=1e-6)


def test_topk_correct_matches_argsort_oracle():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(64, NUM_CLASSES)).astype(np.float32)  # continuous: no ties
    labels = rng.integers(0, NUM_CLASSES, size=64).astype(np.int32)
    got = topk_correct(jnp.asarray(logits), jnp.asarray(labels), ks=(1, 3, 5, 20))
    order = np.argsort(-logits, axis=1)
    for k in (1, 3, 5, 20):
        expected = np.any(order[:, :k] == labels[:, None], axis=1)
        assert got[k].dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(got[k]), expected)
    assert 0 < np.asarray(got[1]).sum() < np.asarray(got[5]).sum() < 64 and np.asarray(got[20]).all()


def test_topk_correct_ties_count_strictly_higher_classes():
    logits = jnp.array(
        [
            [1.0, 2.0, 2.0, 2.0, 0.0],  # label 2 ties with 1 and 3 at the top: in top-1
            [3.0, 2.0, 2.0, 2.0, 0.0],  # label 3 ties for second: not top-1, in top-2
            [3.0, 3.0, 1.0, 1.0, 1.0],  # label 4 ties with 2 and 3 behind two higher: top-3 only
            [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: always in
            [np.nan, 1.0, 0.0, 0.0, 0.0],  # a nan label score never counts
        ]
    )
    labels = jnp.array([2, 3, 4, 0, 0], jnp.int32)
    got = {k: np.asarray(v) for k, v in topk_correct(logits, labels, ks=(1, 2, 3)).items()}
    np.testing.assert_array_equal(got[1], [True, False, False, True, False])
    np.testing.assert_array_equal(got[2], [True, True, False, True, False])
    np.testing.assert_array_equal(got[3], [True, True, True, True, False])
