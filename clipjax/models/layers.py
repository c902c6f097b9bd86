"""Transformer building blocks shared by the image and text towers (Flax Linen).

Blocks are pre-norm (LayerNorm before attention and MLP), as in CLIP, open_clip and big_vision. Matmuls
run in `dtype` (e.g. bfloat16) with float32 parameters; softmax and LayerNorm statistics stay float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    # OpenAI's original CLIP models were trained with this sigmoid approximation.
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}

REMAT_POLICIES: dict[str, Any] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

LAYER_NORM_EPS = 1e-5  # open_clip's value; converted checkpoints depend on it


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
    """LayerNorm with CLIP's epsilon; statistics are computed in float32 whatever `dtype` is."""
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> activation -> Dense(width). Input and output [..., width]."""

    mlp_dim: int
    act: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
        x = ACTIVATIONS[self.act](dense(self.mlp_dim, name="fc1")(x))
        return dense(width, name="fc2")(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection.

    `__call__(x [B, N, width]) -> (out [B, N, width], weights [B, heads, N, N] float32 or None)`; the weights
    are computed (by an explicit softmax) only when `return_weights` is set, otherwise the fused
    `jax.nn.dot_product_attention` runs.
    """

    num_heads: int
    causal: bool = False
    return_weights: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        init = nn.initializers.xavier_uniform()
        qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype, kernel_init=init, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, N, heads, head_dim]
        weights = None
        if self.return_weights:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            logits = logits / math.sqrt(head_dim)
            if self.causal:
                n = x.shape[1]
                logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, -jnp.inf)
            weights = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
        out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, kernel_init=init, name="out")(out)
        return out, weights


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). Returns (x, attn weights)."""

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    return_weights: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        y, weights = SelfAttention(
            self.num_heads, causal=self.causal, return_weights=self.return_weights, dtype=self.dtype, name="attn"
        )(layer_norm("ln_1", self.dtype)(x))
        x = x + y
        x = x + MlpBlock(self.mlp_dim, act=self.act, dtype=self.dtype, name="mlp")(layer_norm("ln_2", self.dtype)(x))
        return x, weights


class Encoder(nn.Module):
    """A stack of `depth` EncoderBlocks named block_0 .. block_{depth-1}.

    `__call__(x [B, N, width], return_layers=(i, ...), return_attention=False)` returns
    `(x, layers, attention)`: `layers` maps each requested block index (negative counts from the end) to
    that block's output [B, N, width]; `attention` lists every block's weights [B, heads, N, N] when asked.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, return_layers: tuple[int, ...] = (), return_attention: bool = False
    ) -> tuple[jax.Array, dict[int, jax.Array], list[jax.Array]]:
        block_cls = EncoderBlock
        if self.remat != "none":
            # Recomputing each block in the backward pass trades ~1/3 more compute for activation memory.
            block_cls = nn.remat(EncoderBlock, policy=REMAT_POLICIES[self.remat], prevent_cse=True)
        wanted = {i % self.depth for i in return_layers}
        layers, attention = {}, []
        for i in range(self.depth):
            x, weights = block_cls(
                self.num_heads,
                self.mlp_dim,
                act=self.act,
                causal=self.causal,
                return_weights=return_attention,
                dtype=self.dtype,
                name=f"block_{i}",
            )(x)
            if i in wanted:
                layers[i] = x
            if return_attention:
                attention.append(weights)
        return x, layers, attention
