"""Optimizer: AdamW with linear warmup and cosine decay, global-norm clipping, a weight-decay mask and, for
finetuning, layer-wise learning-rate decay (see clipjax.train.layer_decay)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from clipjax.models.scan_layout import in_scanned_blocks
from clipjax.train.layer_decay import layer_lr_scales

SCHEDULES = ("cosine", "poly", "step")


def lr_schedule(optim: ConfigDict, total_steps: int) -> optax.Schedule:
    """Learning rate of step s (0-based): lr * (s + 1) / warmup during the `optim.warmup_steps` warmup
    steps (so step 0 already learns, as open_clip's cosine_lr), then from lr down to lr * min_lr_ratio at
    `total_steps`: a cosine (`optim.schedule="cosine"`), mmsegmentation's polynomial decay
    (`"poly"`: (1 - progress) ** optim.poly_power), or detectron2's multi-step decay (`"step"`: lr times
    optim.step_factor at each of optim.step_boundaries, fractions of total_steps; min_lr_ratio unused)."""
    warmup = min(optim.warmup_steps, total_steps)
    peak, end = optim.lr, optim.lr * optim.min_lr_ratio
    kind, power = optim.get("schedule", "cosine"), optim.get("poly_power", 1.0)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        if kind == "poly":
            decayed = end + (peak - end) * (1.0 - progress) ** power
        elif kind == "step":
            passed = sum((step >= int(b * total_steps)).astype(jnp.float32) for b in optim.step_boundaries)
            decayed = peak * optim.step_factor**passed
        else:
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup, peak * (step + 1.0) / max(warmup, 1), decayed)

    return schedule


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all leaves of a pytree together: [] float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def weight_decay_mask(params: Any, no_decay: tuple[str, ...] = ()) -> Any:
    """True where weight decay applies: matrices, convolution kernels and embeddings, as open_clip decays.

    Excluded: biases of any rank (the attention's fused qkv bias is [3, heads, head_dim]), parameters with
    fewer than 2 dimensions (norm scales, 1-D tokens, the logit scale and bias) and those whose name (the last
    key of their path) is in `no_decay` (finetuning recipes name "pos_embed" and "cls_token", as MAE, BEiT and
    ViTDet do). MCi's layer-scale `gamma` is decayed although it is [C] here: MobileCLIP stores it as [C, 1, 1],
    which open_clip's rule decays. A scanned encoder's stacked parameters are judged by one block's rank.
    """

    def decayed(path: tuple, p: Any) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        if name in no_decay or name == "bias":
            return False
        return name == "gamma" or p.ndim - in_scanned_blocks(path) >= 2

    return jax.tree_util.tree_map_with_path(decayed, params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by the matching leaf of `scales` (a fixed pytree of scalars with the
    structure of the parameters); stateless. Updates keep their dtype."""

    def scale(updates: Any, params: Any = None) -> Any:
        del params
        return jax.tree.map(lambda u, s: (u * s).astype(u.dtype), updates, scales)

    return optax.stateless(scale)


def make_optimizer(optim: ConfigDict, total_steps: int, params: Any = None) -> optax.GradientTransformation:
    """Clip by global norm (if grad_clip_norm > 0), then AdamW with the schedule and the decay mask, then, if
    `optim.layer_decay` != 1 and `params` is given, layer-wise lr decay.

    Layer decay multiplies each parameter's AdamW update (the Adam step and the decoupled weight decay, both
    already times the scheduled lr) by decay ** (L + 1 - layer): per-parameter lr = lr * scale, and since
    AdamW decays by lr * wd, the decay is scaled alike, as MAE's per-layer param groups do. Adam's moments
    do not depend on the lr, so the scale can come last. A config without `layer_decay` means 1.0.

    Args:
      optim: config.optim (lr, warmup_steps, min_lr_ratio, weight_decay, b1, b2, eps, grad_clip_norm and
        optionally layer_decay and no_decay).
      total_steps: the schedule's length.
      params: the parameter pytree the optimizer will update (arrays or ShapeDtypeStructs: only its paths
        are read), with the image tower under "image"; needed for layer decay, ignored without it. The
        updates must have exactly this tree structure (dict vs FrozenDict matters).

    Raises:
      ValueError: layer decay is on and `params` has no recognisable image tower.
    """
    adamw = optax.adamw(
        learning_rate=lr_schedule(optim, total_steps),
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mask=functools.partial(weight_decay_mask, no_decay=tuple(optim.get("no_decay", ()))),
    )
    steps = [adamw]
    layer_decay = optim.get("layer_decay", 1.0)
    if layer_decay != 1.0 and params is not None:
        steps.append(scale_by_tree(layer_lr_scales(params, layer_decay)))
    if optim.grad_clip_norm > 0:
        # Clipping first: the norm is of the raw gradients, as without layer decay.
        steps.insert(0, optax.clip_by_global_norm(optim.grad_clip_norm))
    # A single transform stays unwrapped so the optimizer state of existing runs keeps its structure.
    return steps[0] if len(steps) == 1 else optax.chain(*steps)
