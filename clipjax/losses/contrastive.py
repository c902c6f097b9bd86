"""Contrastive image-text losses over the global batch: CLIP's softmax (InfoNCE) and SigLIP's sigmoid.

`impl="naive"` builds the [B, B] logits: the readable oracle. `impl="fused"` (the default) never does:
it visits the logits tile by tile (`clipjax/losses/tiles.py`), keeps only O(B) statistics, and its custom
VJP recomputes the tiles in the backward pass, so memory is O(B * d + tile) instead of O(B^2).

Given a `mesh`, the fused losses run under `shard_map` over its batch axes: each device keeps its own
rows, all-gathers the texts, combines the column statistics across devices (O(B) traffic) and returns
the texts' gradients by reduce-scatter. Without a mesh they run as one program on global arrays.

Every function takes L2-normalised embeddings [B, d] (row i of each is a pair) and the logit scale
as the multiplier itself (already exponentiated, as in open_clip's ClipLoss).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from clipjax.losses.tiles import (
    Collectives,
    TileLayout,
    column_logsumexp,
    matching_pairs,
    prepare_tiles,
    streaming_logsumexp,
    tiled_backward,
    tiled_sum,
)

IMPLEMENTATIONS = ("fused", "naive")
LOSS_KINDS = ("clip", "siglip")
DEFAULT_BLOCK_SIZE = 1024
BATCH_AXES = ("data", "fsdp")


def clip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    *,
    impl: str = "fused",
    mesh: Mesh | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> jax.Array:
    """Symmetric InfoNCE loss of CLIP over every pair of the global batch.

    Args:
      image_emb, text_emb: [B, d] unit rows, any float dtype (scored in float32).
      logit_scale: [] multiplier of the cosine similarities.
      impl: "fused" (tiled, O(B) memory) or "naive" (materialises [B, B]).
      mesh: with "fused", run sharded over `mesh`'s batch axes (the embeddings' batch must be split there).
      block_size: tile side for "fused".

    Returns:
      [] float32: mean of the image->text and text->image cross-entropies.
    """
    if impl == "naive":
        return _naive_clip_loss(image_emb, text_emb, logit_scale)
    check_embeddings(impl, image_emb, text_emb)
    return _fused(_clip_forward, _clip_backward, mesh, block_size)(image_emb, text_emb, logit_scale)


def siglip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    *,
    impl: str = "fused",
    mesh: Mesh | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> jax.Array:
    """SigLIP's pairwise sigmoid loss: -(1/B) sum_ij log sigmoid(z_ij (scale * x_i.y_j + bias)),
    z_ij = 1 for matching pairs and -1 otherwise (big_vision's normalisation: sum over texts, mean over
    images). Arguments as in `clip_loss`, plus the learnable bias [] (SigLIP initialises it at -10).
    """
    if impl == "naive":
        return _naive_siglip_loss(image_emb, text_emb, logit_scale, logit_bias)
    check_embeddings(impl, image_emb, text_emb)
    return _fused(_siglip_forward, _siglip_backward, mesh, block_size)(image_emb, text_emb, logit_scale, logit_bias)


def check_embeddings(impl: str, image_emb: jax.Array, text_emb: jax.Array) -> None:
    """Raises ValueError for an unknown impl or embeddings that are not both [B, d]."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"contrastive loss impl={impl!r} is not one of {IMPLEMENTATIONS}")
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"embeddings must both be [B, d], got {image_emb.shape} and {text_emb.shape}")


def _naive_clip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
    logits = logit_scale * jnp.einsum("id,jd->ij", image_emb.astype(jnp.float32), text_emb.astype(jnp.float32))
    matched = jnp.diagonal(logits)
    image_to_text = jax.nn.logsumexp(logits, axis=1) - matched
    text_to_image = jax.nn.logsumexp(logits, axis=0) - matched
    return 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))


def _naive_siglip_loss(
    image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array
) -> jax.Array:
    logits = logit_scale * jnp.einsum("id,jd->ij", image_emb.astype(jnp.float32), text_emb.astype(jnp.float32))
    signs = 2.0 * jnp.eye(logits.shape[0]) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(signs * (logits + logit_bias))) / logits.shape[0]


# --- fused: a global custom VJP whose forward and backward each run one shard_map ------------------------


def batch_sharded(mesh: Mesh | None, *static: object) -> tuple[P, Callable]:
    """(rows, sharded) for per-device loss bodies body(collectives, *static, *arrays).

    `sharded(body, in_specs, out_specs)` runs body under `shard_map` over `mesh`'s batch axes, or plainly on
    global arrays without a mesh; `rows` is the spec of arrays split like the batch.
    """
    axes = BATCH_AXES if mesh is not None else ()
    collectives = Collectives(axes, math.prod(mesh.shape[axis] for axis in axes) if mesh is not None else 1)

    def sharded(body: Callable, in_specs: tuple, out_specs: tuple) -> Callable:
        fn = lambda *args: body(collectives, *static, *args)  # noqa: E731
        if mesh is None:
            return fn
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    return (P(axes) if axes else P()), sharded


def clip_value(
    collectives: Collectives,
    layout: TileLayout,
    x: jax.Array,
    y: jax.Array,
    scale: jax.Array,
    row_lse: jax.Array,
    col_lse: jax.Array,
) -> jax.Array:
    """CLIP's loss [] from this device's rows x, y [n, d] and the logits' log-sum-exps: row_lse over this
    device's (padded) rows, col_lse over all (padded) columns."""
    # Subtract each pair's own logit row by row before summing: the terms are large and nearly cancel.
    matched = scale * jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32), axis=1)
    own_cols = jax.lax.dynamic_slice_in_dim(col_lse, collectives.row_offset(layout.rows), layout.rows)
    local = jnp.sum((row_lse[: layout.rows] - matched) + (own_cols - matched))
    return 0.5 * collectives.psum(local) / layout.cols


def _fused(forward_body: Callable, backward_body: Callable, mesh: Mesh | None, block_size: int) -> Callable:
    """Builds loss(x, y, *scalars) from per-device bodies.

    forward_body(collectives, block, x, y, *scalars) -> (loss, residual statistics...) and
    backward_body(collectives, block, x, y, *scalars, *statistics, cotangent) -> (dx, dy, *dscalars), where
    x, y are this device's rows; every scalar and loss is replicated. Row statistics come back split like
    the rows (first statistic), others replicated.
    """
    rows, sharded = batch_sharded(mesh, block_size)

    @jax.custom_vjp
    def loss(x, y, *scalars):
        return forward(x, y, *scalars)[0]

    def forward(x, y, *scalars):
        n_scalars = len(scalars)
        value, *stats = sharded(forward_body, (rows, rows) + (P(),) * n_scalars, (P(), rows, P()))(x, y, *scalars)
        return value, (x, y, scalars, tuple(stats))

    def backward(residuals, cotangent):
        x, y, scalars, stats = residuals
        n_scalars = len(scalars)
        in_specs = (rows, rows) + (P(),) * n_scalars + (rows, P()) + (P(),)
        out_specs = (rows, rows) + (P(),) * n_scalars
        grads = sharded(backward_body, in_specs, out_specs)(x, y, *scalars, *stats, cotangent)
        return tuple(grads)

    loss.defvjp(forward, backward)
    return loss


def _clip_forward(collectives: Collectives, block: int, x: jax.Array, y: jax.Array, scale: jax.Array):
    layout, xp, yp = prepare_tiles(collectives, block, x, y)
    batch = layout.cols
    row_lse, col_max, col_sum = streaming_logsumexp(xp, yp, scale, layout)
    col_lse = column_logsumexp(collectives, layout, col_max, col_sum)
    return clip_value(collectives, layout, x, y, scale, row_lse, col_lse), row_lse[: layout.rows], col_lse[:batch]


def _clip_backward(
    collectives: Collectives,
    block: int,
    x: jax.Array,
    y: jax.Array,
    scale: jax.Array,
    row_lse: jax.Array,
    col_lse: jax.Array,
    cotangent: jax.Array,
):
    layout, xp, yp = prepare_tiles(collectives, block, x, y)
    batch = layout.cols
    row_lse, col_lse = layout.pad_rows(row_lse), layout.pad_cols(col_lse)
    weight = cotangent / batch

    def tile_cotangent(similarity, i, j):
        # d loss / d logit_ij = (softmax over row i + softmax over column j) / 2B - [i == j] / B, with the
        # matched term inside the tile so the large terms cancel element by element.
        logits = scale * similarity
        softmaxes = jnp.exp(logits - layout.row_tile(row_lse, i)[:, None]) + jnp.exp(
            logits - layout.col_tile(col_lse, j)[None, :]
        )
        matched = matching_pairs(collectives, layout, i, j)
        valid = layout.row_valid(i)[:, None] & layout.col_valid(j)[None, :]
        return jnp.where(valid, weight * (0.5 * softmaxes - matched), 0.0)

    dx, dy, d_scale, _ = tiled_backward(xp, yp, layout, tile_cotangent)
    dx = scale * dx[: layout.rows]
    dy = scale * collectives.reduce_scatter(dy[:batch])
    return dx.astype(x.dtype), dy.astype(y.dtype), collectives.psum(d_scale)


def _pair_signs(collectives: Collectives, layout: TileLayout, i: jax.Array, j: jax.Array) -> jax.Array:
    """+1 where tile (i, j) holds a matching pair, -1 elsewhere."""
    return 2.0 * matching_pairs(collectives, layout, i, j) - 1.0


def _siglip_forward(collectives: Collectives, block: int, x, y, scale, bias):
    layout, xp, yp = prepare_tiles(collectives, block, x, y)

    def tile_value(similarity, i, j):
        valid = layout.row_valid(i)[:, None] & layout.col_valid(j)[None, :]
        terms = jax.nn.log_sigmoid(_pair_signs(collectives, layout, i, j) * (scale * similarity + bias))
        return jnp.sum(jnp.where(valid, terms, 0.0))

    value = -collectives.psum(tiled_sum(xp, yp, layout, tile_value)) / layout.cols
    # No statistics are needed; two empty placeholders keep the residual layout of the CLIP loss.
    return value, jnp.zeros((layout.rows,)), jnp.zeros((layout.cols,))


def _siglip_backward(collectives: Collectives, block: int, x, y, scale, bias, _row_stat, _col_stat, cotangent):
    layout, xp, yp = prepare_tiles(collectives, block, x, y)
    weight = -cotangent / layout.cols

    def tile_cotangent(similarity, i, j):
        signs = _pair_signs(collectives, layout, i, j)
        valid = layout.row_valid(i)[:, None] & layout.col_valid(j)[None, :]
        # d/dl of -log sigmoid(z l) is -z sigmoid(-z l).
        return jnp.where(valid, weight * signs * jax.nn.sigmoid(-signs * (scale * similarity + bias)), 0.0)

    dx, dy, d_scale, d_bias = tiled_backward(xp, yp, layout, tile_cotangent)
    dx = scale * dx[: layout.rows]
    dy = scale * collectives.reduce_scatter(dy[: layout.cols])
    return dx.astype(x.dtype), dy.astype(y.dtype), collectives.psum(d_scale), collectives.psum(d_bias)
