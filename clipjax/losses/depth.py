"""Monocular depth loss: the scale-invariant log (SILog) loss of GLPDepth / MIM-depth, safe under masking.

Works on global arrays inside jit; with the batch sharded over devices the reductions become collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Floor on the sqrt argument: d sqrt(x)/dx = 1 / (2 sqrt(x)) is infinite at 0 (e.g. pred == target everywhere).
SILOG_EPS = 1e-12


def silog_loss(pred: jax.Array, target: jax.Array, valid: jax.Array, lambd: float = 0.5) -> jax.Array:
    """sqrt(mean(d^2) - lambd * mean(d)^2), d = log(pred) - log(target), over the valid pixels of the whole batch.

    As in GLPDepth / MIM-depth `SiLogLoss` (no x10 factor, no variance focus as in BTS). lambd = 1 makes the loss
    invariant to a global scale of `pred`; lambd = 0 is the RMS of the log error.

    The argument is evaluated as var(d) + (1 - lambd) * mean(d)^2, which equals the formula above but cannot go
    negative by cancellation for lambd <= 1; it is then clamped at SILOG_EPS before the sqrt, so the loss is never
    below sqrt(SILOG_EPS) = 1e-6 when any pixel is valid.

    Args:
      pred: float [B, H, W] predicted depth in metres, any float dtype (computed in float32). Must be > 0 where
        `valid` (e.g. a sigmoid * max_depth head): it is not clamped, as a clamp would silently zero the gradient.
      target: float [B, H, W] ground-truth depth in metres, > 0 where `valid`.
      valid: bool [B, H, W]; other pixels (missing depth, padding) may hold anything (0, inf, nan) and contribute
        nothing to the value or the gradient.
      lambd: the weight of the squared mean log error that is subtracted.

    Returns:
      float32 [] scalar; 0 (with zero gradients) when no pixel is valid.
    """
    valid = valid.astype(bool)
    # Replace invalid pixels before the log, not after: log(0) = -inf there would turn into nan gradients
    # (0 * inf) through any later where.
    pred = jnp.where(valid, pred.astype(jnp.float32), 1.0)
    target = jnp.where(valid, target.astype(jnp.float32), 1.0)
    weights = valid.astype(jnp.float32)
    count = jnp.sum(weights)
    safe_count = jnp.maximum(count, 1.0)
    diff = (jnp.log(pred) - jnp.log(target)) * weights
    mean = jnp.sum(diff) / safe_count
    variance = jnp.sum(weights * jnp.square(diff - mean)) / safe_count
    argument = variance + (1.0 - lambd) * jnp.square(mean)
    loss = jnp.sqrt(jnp.maximum(argument, SILOG_EPS))
    return jnp.where(count > 0, loss, 0.0)
