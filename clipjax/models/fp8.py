"""FP8 matrix products for the transformer blocks' dense layers (`config.model.fp8_matmuls`).

A dense layer's training step runs three products: the forward (x W), the input gradient (g W^T) and the
weight gradient (x^T g). With FP8, activations and weights are rounded to float8_e4m3fn (3 mantissa bits,
largest value 448) and output gradients to float8_e5m2 (2 mantissa bits, largest 57344), each tensor scaled
by a power of two. Scaling (`config.model.fp8_amax_history`):

- current (0): from the tensor's own absolute maximum. No state: parameters, checkpoints and the optimizer
  are the same as without FP8, and the recipe can change at any step. The maximum is a reduction over the
  whole tensor that the rounding must wait for, so on GPUs the tensor is written, then read twice.
- delayed (N > 0, Transformer Engine's *delayed scaling*): activations and gradients from the largest maximum
  of the last N steps, kept per layer in the model state (collection FP8_STATS, in the checkpoints); this
  step's maximum, taken from the rounded tensor, joins the history. The rounding then fuses into the pass
  that produces the tensor. Weights keep current scaling (small tensors, rounded once per step).

Recipes:

- "switchback" (Wortsman et al. 2023, "Stable and low-precision training for large-scale vision-language
  models", who trained CLIP ViT-Huge this way with 8-bit integers): the forward and input-gradient products
  in FP8, the weight gradient in the compute dtype. Its inner dimension is every token of the batch (100,864
  for ViT-B/16 at batch 512), and quantisation noise grows with the inner dimension.
- "all": the weight gradient in FP8 as well (E4M3 activations, E5M2 gradients), as NVIDIA's Transformer
  Engine does. One more product at the FP8 rate, and the layer keeps its FP8 input for the backward pass
  instead of the wider one.

The products take FP8 arrays directly (`lax.dot_general` with a wider `preferred_element_type`, then the
two scales multiplied in), so XLA's GPU compiler runs each as an FP8 GEMM on Hopper, cuBLASLt's or a Triton
one (benchmarks/README.md shows the compiled H100 program); the CPU computes the same values more slowly.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

E4M3 = jnp.float8_e4m3fn  # activations and weights
E5M2 = jnp.float8_e5m2  # output gradients
FP8_RECIPES = ("none", "switchback", "all")
FP8_STATS = "fp8_stats"  # the variable collection of delayed scaling's amax histories


def _power_of_two_scale(amax: jax.Array, fp8_dtype: Any) -> jax.Array:
    """The smallest power of two s with amax / s <= the format's largest value (float32 []; 1 for amax 0,
    infinity for an infinite amax, so the infinite values become NaN and stay visible).

    Built from its exponent bits: exp2 is not exact on every backend (XLA's CPU gives 2^-17 * (1 - 5e-7)),
    and the scale must be, for q * scale to be the same value everywhere."""
    largest = float(jnp.finfo(fp8_dtype).max)
    amax = amax.astype(jnp.float32)
    # ceil(log2(v)) of a normal float32 v from its bits: the exponent, plus one unless the mantissa is zero.
    bits = lax.bitcast_convert_type(jnp.maximum(amax / largest, jnp.finfo(jnp.float32).tiny), jnp.int32)
    power = jnp.minimum((bits >> 23) - 127 + ((bits & 0x7FFFFF) != 0), 127)
    scale = lax.bitcast_convert_type((power + 127) << 23, jnp.float32)  # exactly 2^power
    return jnp.where(amax > 0, jnp.where(jnp.isinf(amax), amax, scale), 1.0)


def _round(x: jax.Array, scale: jax.Array, fp8_dtype: Any) -> jax.Array:
    """x / scale rounded to `fp8_dtype`, clipped to its range first: float8_e4m3fn has no infinity, and a
    value above the range must saturate, not become NaN. NaN stays NaN."""
    largest = float(jnp.finfo(fp8_dtype).max)
    return jnp.clip(x.astype(jnp.float32) / scale, -largest, largest).astype(fp8_dtype)


def quantize(x: jax.Array, fp8_dtype: Any) -> tuple[jax.Array, jax.Array]:
    """x (any shape, a float dtype) -> (q in `fp8_dtype`, same shape; scale, a float32 scalar) with
    x ~= q * scale: the scale is the smallest power of two with max|x| / scale <= the format's largest value
    (1 for an all-zero x).

    A power of two because multiplying by it is exact in every float format, so q * scale is the same value
    in a GEMM's epilogue as in any reference.
    """
    scale = _power_of_two_scale(jnp.max(jnp.abs(x)), fp8_dtype)
    return _round(x, scale, fp8_dtype), scale


def _scaled_product(
    a: jax.Array, a_scale: jax.Array, b: jax.Array, b_scale: jax.Array, contract: tuple[int, int], out_dtype: Any
) -> jax.Array:
    """(a * a_scale) . (b * b_scale) of two 2-D FP8 arrays over a's axis contract[0] and b's contract[1]:
    the FP8 product accumulated in float32, rounded to `out_dtype`, then scaled (exactly: a power of two)."""
    out = lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=out_dtype)
    return out * (a_scale * b_scale).astype(out_dtype)


def _fp8_matmul_forward(x: jax.Array, w: jax.Array, recipe: str) -> tuple[jax.Array, tuple]:
    xq, x_scale = quantize(x, E4M3)
    wq, w_scale = quantize(w, E4M3)
    out = _scaled_product(xq, x_scale, wq, w_scale, (1, 0), x.dtype)
    # "all" keeps the FP8 input (a quarter of float32's bytes, half of bfloat16's) instead of x itself.
    kept_input = (xq, x_scale) if recipe == "all" else (x, None)
    return out, (kept_input, wq, w_scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fp8_matmul(x: jax.Array, w: jax.Array, recipe: str) -> jax.Array:
    """x [M, K] @ w [K, N] -> [M, N] in x's dtype, the products in FP8 as `recipe` ("switchback" or "all")
    says, each operand scaled by its current maximum; x and w share a float dtype (the compute dtype). A
    non-finite input gives a non-finite output (the step is then skipped by `TrainState.apply_gradients`)."""
    return _fp8_matmul_forward(x, w, recipe)[0]


def _backward_products(
    recipe: str,
    kept_input: tuple,
    wq: jax.Array,
    w_scale: jax.Array,
    grad: jax.Array,
    gq: jax.Array,
    g_scale: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """(input gradient, weight gradient) from the output gradient `grad` [M, N] and its rounding gq at g_scale."""
    # x, w and the output share the compute dtype: the gradient's.
    x_kept, x_scale = kept_input
    x_grad = _scaled_product(gq, g_scale, wq, w_scale, (1, 1), grad.dtype)
    if recipe == "all":
        w_grad = _scaled_product(x_kept, x_scale, gq, g_scale, (0, 0), grad.dtype)
    else:  # switchback: the weight gradient from the unquantised input and gradient
        w_grad = lax.dot_general(x_kept, grad, (((0,), (0,)), ((), ())))
    return x_grad, w_grad


def _fp8_matmul_backward(recipe: str, residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    kept_input, wq, w_scale = residuals
    gq, g_scale = quantize(grad, E5M2)
    return _backward_products(recipe, kept_input, wq, w_scale, grad, gq, g_scale)


fp8_matmul.defvjp(_fp8_matmul_forward, _fp8_matmul_backward)


def _rounded_amax(q: jax.Array, scale: jax.Array) -> jax.Array:
    """max |x| (float32 []) read from x's rounding q = x / scale in FP8: max |q| * scale, except where the range
    did not hold x. Saturated (max |q| is the format's largest value), x's maximum is above the range by an
    unknown amount: twice the largest value is reported, and the scale grows a power of two per step until
    nothing saturates. All rounded to zero, x's maximum is below the smallest subnormal: that bound is
    reported, and the next scale moves down by the format's whole range (2^18 for E4M3, 2^32 for E5M2) at once,
    so gradients far below scale 1's range are found in a step or two, not lost.

    Read from q rather than x because XLA then fuses the rounding and this reduction into the pass that
    produces x (a bias add and GELU, a LayerNorm, ...), and x itself is never written: measured on the ViT-B/16
    step compiled for an H100, 182 GB of memory-bound traffic instead of 210 (benchmarks/README.md)."""
    info = jnp.finfo(q.dtype)
    top = jnp.max(jnp.abs(q.astype(jnp.float32)))
    saturated, vanished = top >= float(info.max), top == 0
    estimate = jnp.where(saturated, 2.0 * float(info.max), jnp.where(vanished, float(info.smallest_subnormal), top))
    return estimate * scale


def _history_scale(history: jax.Array, fp8_dtype: Any) -> jax.Array:
    """The power-of-two scale for the largest maximum of a history (float32 [H]); 1 while it is all zero."""
    return _power_of_two_scale(jnp.max(history), fp8_dtype)


def _delayed_forward(x: jax.Array, w: jax.Array, histories: jax.Array, recipe: str) -> tuple[jax.Array, tuple]:
    x_scale = _history_scale(histories[0], E4M3)
    xq = _round(x, x_scale, E4M3)
    # The weights keep current scaling: a [K, N] maximum is cheap, and a weight is rounded once per step.
    wq, w_scale = quantize(w, E4M3)
    out = _scaled_product(xq, x_scale, wq, w_scale, (1, 0), x.dtype)
    kept_input = (xq, x_scale) if recipe == "all" else (x, None)
    return out, (kept_input, wq, w_scale, _rounded_amax(xq, x_scale), histories[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fp8_matmul_delayed(x: jax.Array, w: jax.Array, histories: jax.Array, recipe: str) -> jax.Array:
    """`fp8_matmul` with delayed scaling: x [M, K] and the output gradient are scaled by the largest of
    earlier steps' maxima, histories float32 [2, H] (row 0: the input's, row 1: the output gradient's; all
    zero: scale 1), the weights by their current maximum.

    A value above the scaled range saturates at the format's largest, an infinite one too (NaN stays NaN and
    reaches the loss). The "gradient" this function gives `histories` is not one: it is [2, H] holding this
    step's maxima of the input and the output gradient in column 0 (zeros elsewhere; see `_rounded_amax`),
    which `advance_amax_histories` shifts into the histories. A layer used twice in a step (a tower applied
    to two caption sets) sums its maxima: at most twice the larger, one power of two of headroom.
    """
    return _delayed_forward(x, w, histories, recipe)[0]


def _delayed_backward(recipe: str, residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    kept_input, wq, w_scale, x_amax, g_history = residuals
    g_scale = _history_scale(g_history, E5M2)
    gq = _round(grad, g_scale, E5M2)
    x_grad, w_grad = _backward_products(recipe, kept_input, wq, w_scale, grad, gq, g_scale)
    maxima = jnp.stack([x_amax, _rounded_amax(gq, g_scale)])
    return x_grad, w_grad, jnp.zeros((2, g_history.shape[0]), jnp.float32).at[:, 0].set(maxima)


fp8_matmul_delayed.defvjp(_delayed_forward, _delayed_backward)


def advance_amax_histories(histories: Any, maxima: Any) -> Any:
    """The next step's amax histories: each float32 [..., 2, H] history shifted by one step, with column 0 of
    `maxima` (the "gradient" `fp8_matmul_delayed` gives its histories, same tree) in front. A non-finite
    maximum (its step is skipped by the update guard anyway) is recorded as 0."""

    def advance(history: jax.Array, new: jax.Array) -> jax.Array:
        new = jnp.where(jnp.isfinite(new[..., :1]), new[..., :1], 0.0)
        return jnp.concatenate([new, history[..., :-1]], axis=-1)

    return jax.tree.map(advance, histories, maxima)


def value_and_grad_advancing_fp8_stats(loss_fn: Callable[..., tuple[jax.Array, Any]]) -> Callable[..., tuple]:
    """loss_fn(params, model_state, *args) -> (loss [], aux)  ==>  f(params, model_state, *args) ->
    ((loss, aux), grads of params, next fp8_stats or None).

    With delayed scaling, model_state holds the amax histories (collection FP8_STATS): they are
    differentiated too, and their "gradients" (this step's maxima) advance them; the caller puts the result
    into the model state it keeps. Without them this is `jax.value_and_grad(loss_fn, has_aux=True)`.
    """

    def value_and_grad(params: Any, model_state: Any, *args: Any) -> tuple:
        if FP8_STATS not in model_state:
            return (*jax.value_and_grad(loss_fn, has_aux=True)(params, model_state, *args), None)
        stats = model_state[FP8_STATS]

        def with_stats(params: Any, stats: Any) -> tuple[jax.Array, Any]:
            return loss_fn(params, {**model_state, FP8_STATS: stats}, *args)

        value, (grads, maxima) = jax.value_and_grad(with_stats, argnums=(0, 1), has_aux=True)(params, stats)
        return value, grads, advance_amax_histories(stats, maxima)

    return value_and_grad


def _as_matrices(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> tuple[jax.Array, jax.Array, tuple]:
    """A dense layer's lhs [..., K1..Kc] and rhs [K1..Kc, N1..Nd] (contracted axes last in lhs, first in rhs,
    in order; no batch axes) -> (lhs [M, K], rhs [K, N] in lhs's dtype, the product's shape). Other
    dimension numbers raise a ValueError naming them."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    count = len(lhs_contract)
    trailing = tuple(range(lhs.ndim - count, lhs.ndim))
    if lhs_batch or rhs_batch or tuple(lhs_contract) != trailing or tuple(rhs_contract) != tuple(range(count)):
        raise ValueError(
            f"FP8 products take a dense layer's dimension numbers (the lhs's last axes against the rhs's "
            f"first, no batch axes); got {dimension_numbers} for shapes {lhs.shape} and {rhs.shape}"
        )
    depth = math.prod(lhs.shape[lhs.ndim - count :])
    out_shape = lhs.shape[: lhs.ndim - count] + rhs.shape[count:]
    return lhs.reshape(-1, depth), rhs.reshape(depth, -1).astype(lhs.dtype), out_shape


def _check_recipe(recipe: str) -> None:
    if recipe not in FP8_RECIPES[1:]:
        raise ValueError(f"FP8 recipe {recipe!r} is not one of {FP8_RECIPES[1:]}")


@functools.cache  # one function per recipe: modules built with the same recipe compare equal
def fp8_dot_general(recipe: str) -> Any:
    """A `dot_general` for Flax's `Dense(dot_general=...)` / `DenseGeneral(...)` whose products run in FP8 as
    `recipe` says (see the module docstring), each tensor scaled by its current maximum.

    It takes what those layers pass: lhs [..., K1..Kc] (the contracted axes last, in order), rhs
    [K1..Kc, N1..Nd] (contracted axes first), no batch axes; returns lhs's leading shape + rhs's trailing
    shape in lhs's dtype (`precision` and `preferred_element_type` are not used: FP8 products accumulate in
    float32). Other dimension numbers raise a ValueError naming them.
    """
    _check_recipe(recipe)

    def dot_general(
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers: Any,
        precision: Any = None,
        preferred_element_type: Any = None,
    ) -> jax.Array:
        lhs, rhs, out_shape = _as_matrices(lhs, rhs, dimension_numbers)
        return fp8_matmul(lhs, rhs, recipe).reshape(out_shape)

    return dot_general


class DelayedScalingProduct(nn.Module):
    """The `dot_general` of one dense layer with delayed scaling (Flax's `dot_general_cls`): FP8 products
    as `recipe` says, the input and the output gradient scaled from the largest of their last
    `amax_history` steps' maxima, kept as variable "amax_history" float32 [2, amax_history] in the FP8_STATS
    collection (see `fp8_matmul_delayed`). Called as `lax.dot_general` with a dense layer's dimension
    numbers (see `fp8_dot_general`).

    Applied to variables without the histories (weights saved by a run without delayed scaling, e.g. for
    evaluation), the layer scales by current maxima instead.
    """

    recipe: str
    amax_history: int

    @nn.compact
    def __call__(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers: Any,
        precision: Any = None,
        preferred_element_type: Any = None,
    ) -> jax.Array:
        lhs, rhs, out_shape = _as_matrices(lhs, rhs, dimension_numbers)
        if not (self.is_initializing() or self.has_variable(FP8_STATS, "amax_history")):
            return fp8_matmul(lhs, rhs, self.recipe).reshape(out_shape)
        shape = (2, self.amax_history)
        histories = self.variable(FP8_STATS, "amax_history", jnp.zeros, shape, jnp.float32).value
        return fp8_matmul_delayed(lhs, rhs, histories, self.recipe).reshape(out_shape)


@functools.cache  # one set of arguments per recipe and history: modules built alike compare equal
def dense_product(recipe: str, amax_history: int = 0) -> dict[str, Any]:
    """The keyword arguments that make Flax's Dense / DenseGeneral multiply as configured: {} for "none"
    (`lax.dot_general` in the compute dtype), FP8 products with current scaling (`amax_history` 0) or with
    delayed scaling from the last `amax_history` steps' maxima. Parameters are the same in every case."""
    if recipe == "none":
        return {}
    _check_recipe(recipe)
    if amax_history < 0:
        raise ValueError(f"amax_history {amax_history} is negative")
    if amax_history == 0:
        return {"dot_general": fp8_dot_general(recipe)}
    return {"dot_general_cls": functools.partial(DelayedScalingProduct, recipe, amax_history)}
