"""Text tower of OpenAI CLIP: transformer over BPE tokens (causal by default), pooled at the end-of-text token."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax.models.layers import Encoder, layer_norm, open_clip_text_inits

Dtype = Any


class TextTransformer(nn.Module):
    """CLIP text encoder.

    `__call__(tokens)` takes int32 token ids [B, L] (L <= context_length, zero-padded, from
    `clipjax.tokenizer.tokenize`) and returns a dict:
      embedding  [B, embed_dim]  projection of the end-of-text token's feature (not L2-normalised)
      pooled     [B, width]      the end-of-text token's feature after ln_final
      tokens     [B, L, width]   every token after ln_final
      layers / attention         as in `VisionTransformer`
    The end-of-text token is found as the largest id in each row: 49407 is the largest id in CLIP's
    vocabulary, the trick OpenAI's implementation uses. Parameters start as open_clip's do (token embeddings
    N(0, 0.02), position embeddings N(0, 0.01), the blocks by `open_clip_text_inits`, the projection
    N(0, width^-1/2)); biases at zero.
    """

    vocab_size: int
    context_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    embed_dim: int
    act: str = "gelu"
    causal: bool = True  # False: every token sees every token (MobileCLIP-S1/S2 text towers)
    remat: str = "none"
    scan: bool = False  # nn.scan over the blocks (see clipjax.models.layers.Encoder)
    attention: str = "auto"  # see clipjax.models.layers.attention_implementation
    dtype: Dtype = jnp.float32
    fp8_matmuls: str = "none"  # FP8 recipe of the blocks' dense layers (clipjax.models.fp8)
    fp8_amax_history: int = 0  # 0: FP8 scaled by current maxima; N: by the last N steps' (delayed scaling)

    @nn.compact
    def __call__(
        self, tokens: jax.Array, return_layers: tuple[int, ...] = (), return_attention: bool = False
    ) -> dict[str, Any]:
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens per text exceed context_length {self.context_length}")
        x = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=nn.initializers.normal(stddev=0.02),
            dtype=self.dtype,
            name="token_embed",
        )(tokens)
        pos = self.param("pos_embed", nn.initializers.normal(stddev=0.01), (self.context_length, self.width))
        x = x + pos[:length].astype(x.dtype)
        x, layers, attention = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            act=self.act,
            causal=self.causal,
            remat=self.remat,
            scan=self.scan,
            attention=self.attention,
            dtype=self.dtype,
            fp8=self.fp8_matmuls,
            fp8_amax_history=self.fp8_amax_history,
            inits=open_clip_text_inits(self.width, self.depth),
            name="encoder",
        )(x, return_layers, return_attention)
        x = layer_norm("ln_final", self.dtype)(x)
        pooled = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]
        embedding = nn.Dense(
            self.embed_dim, use_bias=False, dtype=self.dtype, kernel_init=nn.initializers.normal(self.width**-0.5),
            name="proj",
        )(pooled)  # fmt: skip
        return {"embedding": embedding, "pooled": pooled, "tokens": x, "layers": layers, "attention": attention}
