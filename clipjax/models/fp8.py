"""FP8 matrix products for the transformer blocks' dense layers (`config.model.fp8_matmuls`).

A dense layer's training step runs three products: the forward (x W), the input gradient (g W^T) and the
weight gradient (x^T g). With FP8, activations and weights are rounded to float8_e4m3fn (3 mantissa bits,
largest value 448) and output gradients to float8_e5m2 (2 mantissa bits, largest 57344), each tensor scaled
by a power of two from its own current absolute maximum, so no scaling state is kept: parameters,
checkpoints and the optimizer are the same as without FP8, and the option can change at any step. Recipes:

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
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

E4M3 = jnp.float8_e4m3fn  # activations and weights
E5M2 = jnp.float8_e5m2  # output gradients
FP8_RECIPES = ("none", "switchback", "all")


def quantize(x: jax.Array, fp8_dtype: Any) -> tuple[jax.Array, jax.Array]:
    """x (any shape, a float dtype) -> (q in `fp8_dtype`, same shape; scale, a float32 scalar) with
    x ~= q * scale: the scale is the smallest power of two with max|x| / scale <= the format's largest value
    (1 for an all-zero x).

    A power of two because multiplying by it is exact in every float format, so q * scale is the same value
    in a GEMM's epilogue as in any reference. Values are clipped to the format's range before the conversion:
    float8_e4m3fn has no infinity, and log2 rounding the wrong way must not turn the largest value into NaN.
    """
    largest = float(jnp.finfo(fp8_dtype).max)
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    scale = jnp.where(amax > 0, jnp.exp2(jnp.ceil(jnp.log2(amax / largest))), 1.0)
    return jnp.clip(x.astype(jnp.float32) / scale, -largest, largest).astype(fp8_dtype), scale


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
    says; x and w share a float dtype (the compute dtype). A non-finite input gives a non-finite output (the
    step is then skipped by `TrainState.apply_gradients`)."""
    return _fp8_matmul_forward(x, w, recipe)[0]


def _fp8_matmul_backward(recipe: str, residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    # x, w and the output share the compute dtype: the gradient's.
    (x_kept, x_scale), wq, w_scale = residuals
    gq, g_scale = quantize(grad, E5M2)
    x_grad = _scaled_product(gq, g_scale, wq, w_scale, (1, 1), grad.dtype)
    if recipe == "all":
        w_grad = _scaled_product(x_kept, x_scale, gq, g_scale, (0, 0), grad.dtype)
    else:  # switchback: the weight gradient from the unquantised input and gradient
        w_grad = lax.dot_general(x_kept, grad, (((0,), (0,)), ((), ())))
    return x_grad, w_grad


fp8_matmul.defvjp(_fp8_matmul_forward, _fp8_matmul_backward)


@functools.cache  # one function per recipe: modules built with the same recipe compare equal
def fp8_dot_general(recipe: str) -> Any:
    """A `dot_general` for Flax's `Dense(dot_general=...)` / `DenseGeneral(...)` whose products run in FP8 as
    `recipe` says (see the module docstring).

    It takes what those layers pass: lhs [..., K1..Kc] (the contracted axes last, in order), rhs
    [K1..Kc, N1..Nd] (contracted axes first), no batch axes; returns lhs's leading shape + rhs's trailing
    shape in lhs's dtype (`precision` and `preferred_element_type` are not used: FP8 products accumulate in
    float32). Other dimension numbers raise a ValueError naming them.
    """
    if recipe not in FP8_RECIPES[1:]:
        raise ValueError(f"FP8 recipe {recipe!r} is not one of {FP8_RECIPES[1:]}")

    def dot_general(
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers: Any,
        precision: Any = None,
        preferred_element_type: Any = None,
    ) -> jax.Array:
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
        count = len(lhs_contract)
        trailing = tuple(range(lhs.ndim - count, lhs.ndim))
        if lhs_batch or rhs_batch or tuple(lhs_contract) != trailing or tuple(rhs_contract) != tuple(range(count)):
            raise ValueError(
                f"FP8 products take a dense layer's dimension numbers (the lhs's last axes against the rhs's "
                f"first, no batch axes); got {dimension_numbers} for shapes {lhs.shape} and {rhs.shape}"
            )
        depth = math.prod(lhs.shape[lhs.ndim - count :])
        out = fp8_matmul(lhs.reshape(-1, depth), rhs.reshape(depth, -1).astype(lhs.dtype), recipe)
        return out.reshape(lhs.shape[: lhs.ndim - count] + rhs.shape[count:])

    return dot_general
