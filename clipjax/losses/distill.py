"""MobileCLIP's distillation from stored teacher embeddings, fused with CLIP's loss over the global batch.

DataCompDR stores, for each sample, an ensemble teacher's embedding of the image (under the stored augmentation
the pipeline replays) and of its captions: the K members' vectors side by side, [D = sum(teacher_dims)]. Over
the global batch of B pairs each member k gives teacher logits T^k = teacher_scale * a^k (b^k)^T of its unit
vectors, and the targets average the members' probabilities ("average after softmax", MobileCLIP's recipe):

  P_row = mean_k softmax over texts (T^k)        P_col = mean_k softmax over images (T^k)

The distillation loss is the cross-entropy of the student's logits S = scale * x y^T against them, averaged
over both directions (open_clip's DistillClipLoss as MobileCLIP patched it):

  KD = 1/(2B) [ sum_ij P_row_ij (lse_j S_ij - S_ij) + sum_ij P_col_ij (lse_i S_ij - S_ij) ]

a cross-entropy, not a KL divergence: the two differ by the teacher's entropy, which has no gradient. Every
term is non-negative, so the tiled sum has no cancellation. MobileCLIP trains on (1 - w) CLIP + w KD, with
w = 0.75 for ViT-B and 1.0 for its small models.

`impl="fused"` never holds a [B, B] matrix: like the fused CLIP loss (`clipjax/losses/contrastive.py`) it
visits the logits tile by tile, the student's and the K teachers', keeps O(B) statistics (row and column
log-sum-exps of each), and its custom VJP recomputes the tiles. Under a `mesh` each device keeps its rows and
gathers the texts and the teacher's texts. `impl="naive"` builds every matrix: the readable oracle.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from clipjax.losses.contrastive import DEFAULT_BLOCK_SIZE, batch_sharded, check_embeddings, clip_loss, clip_value
from clipjax.losses.tiles import (
    Collectives,
    TileLayout,
    column_logsumexp,
    matching_pairs,
    prepare_tiles,
    streaming_logsumexp,
    tile_similarity,
    tiled_backward,
    tiled_sum,
)


def clip_distillation_losses(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    teacher_image: jax.Array,
    teacher_text: jax.Array,
    *,
    teacher_dims: tuple[int, ...],
    teacher_scale: float,
    impl: str = "fused",
    mesh: Mesh | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[jax.Array, jax.Array]:
    """CLIP's loss and the distillation loss of the same student logits, in one pass over the tiles.

    Args:
      image_emb, text_emb: [B, d] the student's unit rows, any float dtype (scored in float32).
      logit_scale: [] the student's multiplier of the cosine similarities.
      teacher_image, teacher_text: [B, D] the teacher's embeddings, D = sum(teacher_dims); each member's slice
        is normalised here (stored vectors need not be unit). No gradient flows into them.
      teacher_dims: the ensemble members' widths, in the order their slices are stored (DataCompDR's
        teacher, OpenAI's and DataComp-XL's ViT-L/14: (768, 768); config.loss.teacher_dims).
      teacher_scale: the teacher's logit scale (MobileCLIP: 100; config.loss.teacher_scale).
      impl, mesh, block_size: as `clipjax.losses.clip_loss`.

    Returns:
      (clip, kd): [] float32 each; clip is exactly `clip_loss` of the student's embeddings.
    """
    check_embeddings(impl, image_emb, text_emb)
    width = sum(teacher_dims)
    expected = (image_emb.shape[0], width)
    if teacher_image.shape != expected or teacher_text.shape != expected:
        raise ValueError(
            f"teacher embeddings must both be [B, sum(teacher_dims)] = {list(expected)}, got "
            f"{list(teacher_image.shape)} and {list(teacher_text.shape)}"
        )
    teacher = (_member_units(teacher_image, teacher_dims), _member_units(teacher_text, teacher_dims))
    if impl == "naive":
        clip = clip_loss(image_emb, text_emb, logit_scale, impl="naive")
        return clip, _naive_distillation(image_emb, text_emb, logit_scale, *teacher, teacher_scale)
    return _fused(mesh, block_size, float(teacher_scale))(image_emb, text_emb, logit_scale, *teacher)


def _member_units(teacher: jax.Array, dims: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """[B, D] -> K unit-row float32 arrays [B, dims[k]], without gradient."""
    teacher = jax.lax.stop_gradient(teacher.astype(jnp.float32))
    bounds = [0, *itertools.accumulate(int(width) for width in dims)]
    members = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = teacher[:, start:stop]
        # A zero vector stays zero (its logits are all equal) instead of becoming NaN.
        members.append(part / jnp.maximum(jnp.linalg.norm(part, axis=1, keepdims=True), 1e-12))
    return tuple(members)


def _naive_distillation(x, y, scale, teacher_x, teacher_y, teacher_scale) -> jax.Array:
    student = scale * jnp.einsum("id,jd->ij", x.astype(jnp.float32), y.astype(jnp.float32))
    teacher = [teacher_scale * tx @ ty.T for tx, ty in zip(teacher_x, teacher_y)]
    p_row = sum(jax.nn.softmax(t, axis=1) for t in teacher) / len(teacher)
    p_col = sum(jax.nn.softmax(t, axis=0) for t in teacher) / len(teacher)
    row_terms = -jnp.sum(p_row * jax.nn.log_softmax(student, axis=1), axis=1)
    col_terms = -jnp.sum(p_col * jax.nn.log_softmax(student, axis=0), axis=0)
    return 0.5 * (jnp.mean(row_terms) + jnp.mean(col_terms))


# --- fused --------------------------------------------------------------------------------------------------


def _fused(mesh: Mesh | None, block_size: int, teacher_scale: float):
    """loss(x, y, scale, teacher_x, teacher_y) -> (clip, kd) with a custom VJP; see the module docstring."""
    rows, sharded = batch_sharded(mesh, block_size, teacher_scale)

    def members_spec(members):
        return tuple(rows for _ in members)

    @jax.custom_vjp
    def losses(x, y, scale, teacher_x, teacher_y):
        return forward(x, y, scale, teacher_x, teacher_y)[0]

    def forward(x, y, scale, teacher_x, teacher_y):
        in_specs = (rows, rows, P(), members_spec(teacher_x), members_spec(teacher_y))
        # Outputs: the two losses, the student's row and column log-sum-exps, each member's row and column ones.
        out_specs = (P(), P(), rows, P(), members_spec(teacher_x), tuple(P() for _ in teacher_x))
        clip, kd, *stats = sharded(_forward_body, in_specs, out_specs)(x, y, scale, teacher_x, teacher_y)
        return (clip, kd), (x, y, scale, teacher_x, teacher_y, tuple(stats))

    def backward(residuals, cotangents):
        x, y, scale, teacher_x, teacher_y, stats = residuals
        members, replicated = members_spec(teacher_x), tuple(P() for _ in teacher_x)
        in_specs = (rows, rows, P(), members, members, rows, P(), members, replicated, P(), P())
        dx, dy, d_scale = sharded(_backward_body, in_specs, (rows, rows, P()))(
            x, y, scale, teacher_x, teacher_y, *stats, *cotangents
        )
        zeros = lambda members: tuple(jnp.zeros_like(m) for m in members)  # noqa: E731
        return dx, dy, d_scale, zeros(teacher_x), zeros(teacher_y)

    losses.defvjp(forward, backward)
    return losses


def _teacher_tiles(collectives: Collectives, layout: TileLayout, teacher_x, teacher_y):
    """Each member's rows padded to whole tiles and its gathered, padded columns."""
    return [(layout.pad_rows(tx), layout.pad_cols(collectives.gather(ty))) for tx, ty in zip(teacher_x, teacher_y)]


def _targets(layout, tiles, row_lses, col_lses, teacher_scale, i, j):
    """The teacher's P_row and P_col on tile (i, j): float32 [r, c] each, averaged over the members."""
    p_row, p_col = 0.0, 0.0
    for (tx, ty), row_lse, col_lse in zip(tiles, row_lses, col_lses):
        logits = teacher_scale * tile_similarity(layout.row_tile(tx, i), layout.col_tile(ty, j))
        p_row = p_row + jnp.exp(logits - layout.row_tile(row_lse, i)[:, None])
        p_col = p_col + jnp.exp(logits - layout.col_tile(col_lse, j)[None, :])
    return p_row / len(tiles), p_col / len(tiles)


def _forward_body(collectives, block, teacher_scale, x, y, scale, teacher_x, teacher_y):
    layout, xp, yp = prepare_tiles(collectives, block, x, y)
    batch = layout.cols
    row_lse, col_max, col_sum = streaming_logsumexp(xp, yp, scale, layout)
    col_lse = column_logsumexp(collectives, layout, col_max, col_sum)
    tiles = _teacher_tiles(collectives, layout, teacher_x, teacher_y)
    teacher_rows, teacher_cols = [], []
    for tx, ty in tiles:
        t_row, t_max, t_sum = streaming_logsumexp(tx, ty, teacher_scale, layout)
        teacher_rows.append(t_row)
        teacher_cols.append(column_logsumexp(collectives, layout, t_max, t_sum))

    clip = clip_value(collectives, layout, x, y, scale, row_lse, col_lse)

    def tile_value(similarity, i, j):
        student = scale * similarity
        p_row, p_col = _targets(layout, tiles, teacher_rows, teacher_cols, teacher_scale, i, j)
        terms = p_row * (layout.row_tile(row_lse, i)[:, None] - student)
        terms = terms + p_col * (layout.col_tile(col_lse, j)[None, :] - student)
        valid = layout.row_valid(i)[:, None] & layout.col_valid(j)[None, :]
        return jnp.sum(jnp.where(valid, terms, 0.0))

    kd = 0.5 * collectives.psum(tiled_sum(xp, yp, layout, tile_value)) / batch
    teacher_rows = tuple(t[: layout.rows] for t in teacher_rows)
    teacher_cols = tuple(t[:batch] for t in teacher_cols)
    return clip, kd, row_lse[: layout.rows], col_lse[:batch], teacher_rows, teacher_cols


def _backward_body(
    collectives,
    block,
    teacher_scale,
    x,
    y,
    scale,
    teacher_x,
    teacher_y,
    row_lse,
    col_lse,
    teacher_rows,
    teacher_cols,
    clip_cotangent,
    kd_cotangent,
):
    layout, xp, yp = prepare_tiles(collectives, block, x, y)
    batch = layout.cols
    row_lse, col_lse = layout.pad_rows(row_lse), layout.pad_cols(col_lse)
    tiles = _teacher_tiles(collectives, layout, teacher_x, teacher_y)
    teacher_rows = [layout.pad_rows(t) for t in teacher_rows]
    teacher_cols = [layout.pad_cols(t) for t in teacher_cols]
    # d clip / d S_ij = (softmax_row + softmax_col) / 2B - [i == j] / B;
    # d kd / d S_ij = (softmax_row + softmax_col - P_row - P_col) / 2B.
    both = (clip_cotangent + kd_cotangent) * 0.5 / batch

    def tile_cotangent(similarity, i, j):
        logits = scale * similarity
        softmaxes = jnp.exp(logits - layout.row_tile(row_lse, i)[:, None]) + jnp.exp(
            logits - layout.col_tile(col_lse, j)[None, :]
        )
        p_row, p_col = _targets(layout, tiles, teacher_rows, teacher_cols, teacher_scale, i, j)
        matched = matching_pairs(collectives, layout, i, j)
        cotangent = (
            both * softmaxes - (clip_cotangent / batch) * matched - (kd_cotangent * 0.5 / batch) * (p_row + p_col)
        )
        valid = layout.row_valid(i)[:, None] & layout.col_valid(j)[None, :]
        return jnp.where(valid, cotangent, 0.0)

    dx, dy, d_scale, _ = tiled_backward(xp, yp, layout, tile_cotangent)
    dx = scale * dx[: layout.rows]
    dy = scale * collectives.reduce_scatter(dy[:batch])
    return dx.astype(x.dtype), dy.astype(y.dtype), collectives.psum(d_scale)
