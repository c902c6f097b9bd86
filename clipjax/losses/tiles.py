"""Tiled evaluation of image-text logits: the machinery under the fused contrastive losses.

Each device holds its own `n` image rows `x` [n, d] and the gathered text rows `y` [B, d]. The logits
scale * x @ y.T are visited tile by tile (`row_block` x `col_block`), never more than one tile at a time,
so memory stays O((n + B) * d + tile) whatever B is. Rows are padded up to whole tiles; padded rows and
columns are masked out of every reduction.

`Collectives` names the mesh axes the rows are split over; with no axes it is a single device and every
collective is the identity. The functions here are meant to run inside `shard_map` (or on one device).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Collectives:
    """Collectives over the mesh axes that split the batch; `axes=()` means one device, no communication."""

    axes: tuple[str, ...] = ()
    size: int = 1  # devices along `axes` together

    def gather(self, x: jax.Array) -> jax.Array:
        """[n, d] per device -> [n * devices, d], in device order."""
        return jax.lax.all_gather(x, self.axes, axis=0, tiled=True) if self.axes else x

    def psum(self, x: jax.Array) -> jax.Array:
        return jax.lax.psum(x, self.axes) if self.axes else x

    def pmax(self, x: jax.Array) -> jax.Array:
        return jax.lax.pmax(x, self.axes) if self.axes else x

    def reduce_scatter(self, x: jax.Array) -> jax.Array:
        """[n * devices, d] partial sums per device -> this device's [n, d] rows of the total."""
        return jax.lax.psum_scatter(x, self.axes, scatter_dimension=0, tiled=True) if self.axes else x

    def row_offset(self, rows_per_device: int) -> jax.Array:
        """Global index of this device's first row."""
        return jax.lax.axis_index(self.axes) * rows_per_device if self.axes else jnp.int32(0)


@dataclasses.dataclass(frozen=True)
class TileLayout:
    """Static tiling of a local [rows, d] x global [cols, d] logit matrix."""

    rows: int  # valid local rows
    cols: int  # valid global columns
    row_block: int
    col_block: int

    @classmethod
    def create(cls, rows: int, cols: int, block: int) -> TileLayout:
        return cls(rows, cols, min(block, rows), min(block, cols))

    @property
    def row_tiles(self) -> int:
        return -(-self.rows // self.row_block)

    @property
    def col_tiles(self) -> int:
        return -(-self.cols // self.col_block)

    def pad_rows(self, x: jax.Array) -> jax.Array:
        return jnp.pad(x, [(0, self.row_tiles * self.row_block - self.rows)] + [(0, 0)] * (x.ndim - 1))

    def pad_cols(self, y: jax.Array) -> jax.Array:
        return jnp.pad(y, [(0, self.col_tiles * self.col_block - self.cols)] + [(0, 0)] * (y.ndim - 1))

    def row_tile(self, x: jax.Array, i: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(x, i * self.row_block, self.row_block)

    def col_tile(self, y: jax.Array, j: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(y, j * self.col_block, self.col_block)

    def row_valid(self, i: jax.Array) -> jax.Array:
        """bool [row_block]: which rows of tile i are real."""
        return i * self.row_block + jnp.arange(self.row_block) < self.rows

    def col_valid(self, j: jax.Array) -> jax.Array:
        return j * self.col_block + jnp.arange(self.col_block) < self.cols


def prepare_tiles(
    collectives: Collectives, block: int, x: jax.Array, y: jax.Array
) -> tuple[TileLayout, jax.Array, jax.Array]:
    """This device's rows x [n, d] padded to whole tiles, and all devices' columns y gathered and padded."""
    layout = TileLayout.create(x.shape[0], x.shape[0] * collectives.size, block)
    return layout, layout.pad_rows(x), layout.pad_cols(collectives.gather(y))


def column_logsumexp(collectives: Collectives, layout: TileLayout, col_max: jax.Array, col_sum: jax.Array) -> jax.Array:
    """Combines the devices' column statistics from `streaming_logsumexp` (a log-sum-exp of log-sum-exps, O(B)
    communication) into each column's log-sum-exp over all rows: float32 [cols padded], 0 on padding."""
    col_valid = jnp.arange(col_max.shape[0]) < layout.cols
    global_max = collectives.pmax(col_max)
    shifted = jnp.where(col_valid, col_max - global_max, -jnp.inf)
    return jnp.where(col_valid, global_max + jnp.log(collectives.psum(col_sum * jnp.exp(shifted))), 0.0)


def matching_pairs(collectives: Collectives, layout: TileLayout, i: jax.Array, j: jax.Array) -> jax.Array:
    """float32 [r, c]: 1 where tile (i, j) holds a matching pair (global row == column), else 0."""
    rows = collectives.row_offset(layout.rows) + i * layout.row_block + jnp.arange(layout.row_block)
    cols = j * layout.col_block + jnp.arange(layout.col_block)
    return (rows[:, None] == cols[None, :]).astype(jnp.float32)


def tile_similarity(x_tile: jax.Array, y_tile: jax.Array) -> jax.Array:
    """[r, d] x [c, d] -> [r, c] float32 dot products, accumulated in float32 whatever the input dtype."""
    return jnp.einsum("rd,cd->rc", x_tile, y_tile, preferred_element_type=jnp.float32)


def streaming_logsumexp(
    x: jax.Array, y: jax.Array, scale: jax.Array, layout: TileLayout
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log-sum-exp of the logits scale * x @ y.T along both axes, in one pass over the tiles.

    Args:
      x: [rows padded, d] local rows; y: [cols padded, d] all columns (both padded to whole tiles).

    Returns:
      row_lse [rows padded] over the valid columns (complete);
      col_max, col_sum [cols padded]: this device's share of the column log-sum-exp over its valid rows,
      as a running maximum and a sum of exp(logit - max), to be combined across devices.
    """
    cols_padded = layout.col_tiles * layout.col_block

    def over_rows(i, carry):
        row_lse, col_max, col_sum = carry
        x_tile, row_ok = layout.row_tile(x, i), layout.row_valid(i)

        def over_cols(j, inner):
            run_max, run_sum, col_max, col_sum = inner
            logits = scale * tile_similarity(x_tile, layout.col_tile(y, j))
            # Image -> text: this tile's columns join each row's running log-sum-exp.
            row_side = jnp.where(layout.col_valid(j)[None, :], logits, -jnp.inf)
            new_max = jnp.maximum(run_max, row_side.max(axis=1))
            run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.exp(row_side - new_max[:, None]).sum(axis=1)
            # Text -> image: this tile's rows join each column's running log-sum-exp.
            col_side = jnp.where(row_ok[:, None], logits, -jnp.inf)
            old_max, old_sum = layout.col_tile(col_max, j), layout.col_tile(col_sum, j)
            new_col_max = jnp.maximum(old_max, col_side.max(axis=0))
            new_col_sum = old_sum * jnp.exp(old_max - new_col_max) + jnp.exp(col_side - new_col_max[None, :]).sum(0)
            col_max = jax.lax.dynamic_update_slice_in_dim(col_max, new_col_max, j * layout.col_block, 0)
            col_sum = jax.lax.dynamic_update_slice_in_dim(col_sum, new_col_sum, j * layout.col_block, 0)
            return new_max, run_sum, col_max, col_sum

        start = (jnp.full((layout.row_block,), -jnp.inf), jnp.zeros((layout.row_block,)), col_max, col_sum)
        run_max, run_sum, col_max, col_sum = jax.lax.fori_loop(0, layout.col_tiles, over_cols, start)
        row_lse = jax.lax.dynamic_update_slice_in_dim(row_lse, run_max + jnp.log(run_sum), i * layout.row_block, 0)
        return row_lse, col_max, col_sum

    start = (
        jnp.zeros((layout.row_tiles * layout.row_block,)),
        jnp.full((cols_padded,), -jnp.inf),
        jnp.zeros((cols_padded,)),
    )
    return jax.lax.fori_loop(0, layout.row_tiles, over_rows, start)


def tiled_sum(
    x: jax.Array, y: jax.Array, layout: TileLayout, tile_value: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
) -> jax.Array:
    """Sum over the valid tiles of `tile_value(similarity [r, c], i, j)` (which masks its own padding)."""

    def over_rows(i, total):
        x_tile = layout.row_tile(x, i)

        def over_cols(j, total):
            return total + tile_value(tile_similarity(x_tile, layout.col_tile(y, j)), i, j)

        return jax.lax.fori_loop(0, layout.col_tiles, over_cols, total)

    return jax.lax.fori_loop(0, layout.row_tiles, over_rows, jnp.float32(0.0))


def tiled_backward(
    x: jax.Array,
    y: jax.Array,
    layout: TileLayout,
    tile_cotangent: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Gradients of a loss of affine logits (scale * x @ y.T + bias), recomputing each tile.

    Args:
      tile_cotangent: (similarity [r, c], i, j) -> dLoss/dlogits for tile (i, j), float32, zero on padding.

    Returns:
      (sum_j g_ij y_j [rows padded, d], sum_i g_ij x_i [cols padded, d] over this device's rows, both float32
      and still to be multiplied by the scale; sum g_ij * similarity_ij, the scale's gradient; sum g_ij, the
      bias's gradient), where g is the cotangent.
    """

    def over_rows(i, carry):
        dx, dy, d_scale, d_bias = carry
        x_tile = layout.row_tile(x, i)

        def over_cols(j, inner):
            dx_tile, dy, d_scale, d_bias = inner
            y_tile = layout.col_tile(y, j)
            similarity = tile_similarity(x_tile, y_tile)
            cotangent = tile_cotangent(similarity, i, j)
            # Matmuls in the inputs' dtype with float32 accumulation, as flash attention does.
            low = cotangent.astype(x.dtype)
            dx_tile = dx_tile + jnp.einsum("rc,cd->rd", low, y_tile, preferred_element_type=jnp.float32)
            dy_part = jnp.einsum("rc,rd->cd", low, x_tile, preferred_element_type=jnp.float32)
            dy = jax.lax.dynamic_update_slice_in_dim(dy, layout.col_tile(dy, j) + dy_part, j * layout.col_block, 0)
            return dx_tile, dy, d_scale + jnp.sum(cotangent * similarity), d_bias + jnp.sum(cotangent)

        start = (jnp.zeros((layout.row_block, x.shape[1]), jnp.float32), dy, d_scale, d_bias)
        dx_tile, dy, d_scale, d_bias = jax.lax.fori_loop(0, layout.col_tiles, over_cols, start)
        dx = jax.lax.dynamic_update_slice_in_dim(dx, dx_tile, i * layout.row_block, 0)
        return dx, dy, d_scale, d_bias

    start = (jnp.zeros(x.shape, jnp.float32), jnp.zeros(y.shape, jnp.float32), jnp.float32(0.0), jnp.float32(0.0))
    return jax.lax.fori_loop(0, layout.row_tiles, over_rows, start)
