"""MAE's evaluation: the reconstruction loss over held-out images with fixed masks, and a picture of a few
reconstructions (original | masked | reconstruction with the visible patches) for the workdir and TensorBoard."""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from clipjax.data.transforms import normalization_stats, normalize_images
from clipjax.evals.batches import eval_batches, load_or_stop
from clipjax.losses.mae import NORM_PIX_EPS, mae_targets
from clipjax.ops.patches import patchify, pixel_mask, unpatchify
from clipjax.parallel import replicated

NOISE_SEED = 0  # the masks of evaluation batch b come from fold_in(PRNGKey(NOISE_SEED), b): the same every time


class MaeEvaluator:
    """`evaluator(variables) -> {"eval/loss": mean squared error over the removed patches of every image}`;
    `write_reconstructions(workdir, step)` saves the last evaluation's first images as
    `<workdir>/reconstructions/<step>.png` and to TensorBoard (host 0).

    Args:
      model: a `MaskedAutoencoder`, applied as model.apply(variables, normalised images, noise).
      source, load: records and `load(record) -> {"image": uint8 [S, S, 3]}`.
      normalize: the image normalisation ("clip", "imagenet" or "none"); norm_pix: MAE's per-patch targets.
      batch_size: global images per evaluation step; num_examples: the first N of `source`.
      reconstructions: images shown in the picture (at most one evaluation batch).
    """

    def __init__(
        self,
        model: Any,
        mesh: Mesh,
        source: Any,
        load: Callable[[Any], dict[str, np.ndarray]],
        *,
        normalize: str,
        norm_pix: bool,
        batch_size: int,
        num_examples: int,
        num_threads: int = 8,
        reconstructions: int = 8,
    ) -> None:
        self._mesh, self._source, self._load = mesh, source, load
        self._batch_size, self._num_examples, self._num_threads = batch_size, num_examples, num_threads
        self._shown = min(reconstructions, batch_size)
        self._panel: np.ndarray | None = None
        patch = model.image.patch_size
        mean, std = (jnp.asarray(v) for v in normalization_stats(normalize))

        def outputs(variables: Any, batch: dict[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
            images = normalize_images(batch["image"], normalize)
            grid = (images.shape[1] // patch, images.shape[2] // patch)
            key = jax.random.fold_in(jax.random.PRNGKey(NOISE_SEED), index)
            noise = jax.random.uniform(key, (images.shape[0], grid[0] * grid[1]))
            out = model.apply(variables, images, noise)
            per_patch = jnp.mean((out["pred"] - mae_targets(images, patch, norm_pix)) ** 2, axis=-1)
            removed = out["mask"] * batch["valid"][:, None]
            pred = out["pred"]
            if norm_pix:  # back to pixels with each patch's own statistics, as MAE's visualisation does
                target = patchify(images, patch)
                scale = jnp.sqrt(target.var(axis=-1, keepdims=True, ddof=1) + NORM_PIX_EPS)
                pred = pred * scale + target.mean(axis=-1, keepdims=True)
            shown = pixel_mask(out["mask"][: self._shown], grid, patch)[..., None]
            original = images[: self._shown]
            reconstruction = original * (1 - shown) + unpatchify(pred[: self._shown], grid, patch) * shown
            masked = original * (1 - shown) + (0.5 - mean) / std * shown  # removed patches grey
            panel = jnp.concatenate([original, masked, reconstruction], axis=2) * std + mean
            return {
                "sums": jnp.stack([jnp.sum(per_patch * removed), jnp.sum(removed)]),
                "panel": jnp.clip(jnp.round(panel * 255), 0, 255).astype(jnp.uint8),
            }

        self._outputs = jax.jit(outputs, out_shardings=replicated(mesh))

    def __call__(self, variables: Any) -> dict[str, float]:
        total = np.zeros(2, np.float64)
        batches = eval_batches(
            self._source,
            lambda record: load_or_stop(self._load, record),
            self._mesh,
            batch_size=self._batch_size,
            num_examples=self._num_examples,
            num_threads=self._num_threads,
        )
        for index, batch in enumerate(batches):
            out = self._outputs(variables, batch, jnp.int32(index))
            total += np.asarray(out["sums"], np.float64)
            if index == 0:
                self._panel = np.asarray(out["panel"])
        return {"eval/loss": total[0] / total[1]}

    def write_reconstructions(self, workdir: str, step: int) -> None:
        """The last evaluation's picture: rows of (original | masked | reconstruction) images."""
        if self._panel is None or jax.process_index() != 0:
            return
        picture = np.concatenate(list(self._panel), axis=0)  # the images stacked top to bottom
        directory = os.path.join(workdir, "reconstructions")
        os.makedirs(directory, exist_ok=True)
        Image.fromarray(picture).save(os.path.join(directory, f"{step}.png"))
        from tensorboardX import SummaryWriter

        with SummaryWriter(logdir=workdir, filename_suffix=".reconstructions") as writer:
            writer.add_image("eval/reconstructions", picture, global_step=step, dataformats="HWC")
