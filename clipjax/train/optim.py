"""Optimizer: AdamW with linear warmup and cosine decay, global-norm clipping, and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def lr_schedule(optim: ConfigDict, total_steps: int) -> optax.Schedule:
    """Learning rate of step s (0-based), as open_clip's cosine_lr: lr * (s + 1) / warmup during the
    `optim.warmup_steps` warmup steps (so step 0 already learns), then a cosine from lr to
    lr * min_lr_ratio reached at `total_steps`."""
    warmup = min(optim.warmup_steps, total_steps)
    peak, end = optim.lr, optim.lr * optim.min_lr_ratio

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup, peak * (step + 1.0) / max(warmup, 1), cosine)

    return schedule


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all leaves of a pytree together: [] float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def weight_decay_mask(params: Any) -> Any:
    """True where weight decay applies: matrices and embeddings. Biases, norm scales, 1-D tokens and the
    logit scale (all with fewer than 2 dimensions) are excluded, as open_clip does."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Clip by global norm (if grad_clip_norm > 0), then AdamW with the schedule and the decay mask."""
    adamw = optax.adamw(
        learning_rate=lr_schedule(optim, total_steps),
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mask=weight_decay_mask,
    )
    if optim.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adamw)
    return adamw
