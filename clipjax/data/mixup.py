"""On-device Mixup / CutMix with label smoothing, as in the MAE ImageNet finetuning recipe.

The behaviour follows timm's `Mixup(mode="batch")`: one random draw per call decides whether the batch is
mixed at all (`prob`), whether it is CutMix or Mixup (`switch_prob`) and the mixing weight lambda; every
image is mixed with its partner in the batch reversed along axis 0, with that one lambda. CutMix's lambda is
corrected to the share of pixels actually kept once the box is clipped to the image ("correct_lam").

Everything is jittable with static shapes: the random choices are traced scalars, the CutMix box is a mask
built from iotas, and both branches are computed and selected with `jnp.where` (a few elementwise passes over
the batch, negligible beside the model). Reversing the batch is `x[::-1]`, which jit turns into the right
collective when the batch axis is sharded over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """Label-smoothed one-hot targets.

    Args:
      labels: int [B] class indices in [0, num_classes).
      num_classes: K.
      smoothing: mass spread over all classes; timm's convention, every class gets smoothing / K and the label
        gets 1 - smoothing + smoothing / K, so each row sums to 1.

    Returns:
      float32 [B, K].
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return one_hot * (on_value - off_value) + off_value


def _cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Box to paste from the partner: (bool [H, W] mask, float32 [] corrected lambda = share of pixels kept).

    The box is (int(H * sqrt(1 - lam)), int(W * sqrt(1 - lam))) centred at a uniform pixel; like timm it spans
    half the size (floored) on each side of the centre, then is clipped to the image.
    """
    key_y, key_x = jax.random.split(rng)
    cut_ratio = jnp.sqrt(1.0 - lam)
    half_h = jnp.floor(height * cut_ratio).astype(jnp.int32) // 2
    half_w = jnp.floor(width * cut_ratio).astype(jnp.int32) // 2
    cy = jax.random.randint(key_y, (), 0, height)
    cx = jax.random.randint(key_x, (), 0, width)
    y_lo, y_hi = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
    x_lo, x_hi = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
    rows = jnp.arange(height)
    cols = jnp.arange(width)
    mask = ((rows >= y_lo) & (rows < y_hi))[:, None] & ((cols >= x_lo) & (cols < x_hi))[None, :]
    area = (y_hi - y_lo) * (x_hi - x_lo)
    return mask, 1.0 - area.astype(jnp.float32) / (height * width)


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
    prob: float = 1.0,
    label_smoothing: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """Mix a batch with its reverse (Mixup or CutMix, one draw for the whole batch) and build soft targets.

    Args:
      rng: a PRNG key (typed or raw uint32 [2]); the only source of randomness.
      images: float [B, H, W, C] (any float dtype; may be sharded over the batch axis).
      labels: int [B] class indices.
      num_classes: K.
      mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; 0 disables that kind of mixing.
      switch_prob: chance of CutMix rather than Mixup when both alphas are > 0.
      prob: chance that the batch is mixed at all; otherwise lambda = 1.
      label_smoothing: as in `smooth_labels`, applied to both labels before mixing them.

    Returns:
      (mixed images: same shape and dtype as `images`, targets: float32 [B, K] rows summing to 1), where
      targets = lam * smooth(labels) + (1 - lam) * smooth(labels[::-1]).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point (normalise before mixing), got {images.dtype}")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"alphas must be >= 0, got mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}")
    if not (0.0 <= prob <= 1.0 and 0.0 <= switch_prob <= 1.0):
        raise ValueError(f"prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
    _, height, width, _ = images.shape
    targets = smooth_labels(labels, num_classes, label_smoothing)
    if (mixup_alpha == 0 and cutmix_alpha == 0) or prob == 0:
        return images, targets  # statically never mixed: lambda is always 1, and nothing random is compiled

    key_apply, key_switch, key_lam, key_box = jax.random.split(rng, 4)
    apply = jax.random.uniform(key_apply) < prob
    # Which kind is a static choice when only one alpha is set, so the other is never drawn or compiled.
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(key_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    # Both lambdas in one Beta call: its rejection sampler is the costliest thing here to compile.
    alphas = jnp.array([alpha for alpha in (mixup_alpha, cutmix_alpha) if alpha > 0], jnp.float32)
    lams = jax.random.beta(key_lam, alphas, alphas, dtype=jnp.float32)

    partner = images[::-1]
    compute_dtype = jnp.promote_types(images.dtype, jnp.float32)  # blend low-precision images in float32
    lam = jnp.float32(1.0)
    mixed = images
    if mixup_alpha > 0:
        lam_mixup = lams[0]
        blended = lam_mixup * images.astype(compute_dtype) + (1.0 - lam_mixup) * partner.astype(compute_dtype)
        mixed, lam = blended.astype(images.dtype), lam_mixup
    if cutmix_alpha > 0:
        box, lam_box = _cutmix_box(key_box, lams[-1], height, width)
        # jnp.where rather than a weighted sum: pasted pixels are copied bit for bit.
        cut = jnp.where(box[None, :, :, None], partner, images)
        mixed = jnp.where(use_cutmix, cut, mixed)
        lam = jnp.where(use_cutmix, lam_box, lam)

    lam = jnp.where(apply, lam, 1.0)
    mixed = jnp.where(apply, mixed, images)
    targets = lam * targets + (1.0 - lam) * targets[::-1]
    return mixed, targets
