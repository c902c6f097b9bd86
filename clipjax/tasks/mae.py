"""Masked-autoencoder pretraining (He et al. 2021): the paper's self-supervised baseline, on the same loop, mesh,
checkpoints and data as CLIP pretraining.

The encoder is the image tower `config.model` describes (MAE's own is `model.image.layout="mae"`), under the
name "image", so a run's workdir (or a `best/`-style converted copy) is a `config.init` for every finetuning
task, as a CLIP image tower is. Each step masks `config.mae.mask_ratio` of every image's patches at random
(the noise drawn from the step's key, so a resumed run masks as an uninterrupted one), encodes the visible
ones, decodes all and scores the mean squared error on the removed ones against their (per-patch normalised,
`config.mae.norm_pix_loss`) pixels. The encoder's position embedding stays the fixed sine-cosine table (no
gradient, no weight decay), as MAE's. Images only: captions and labels of any data kind are ignored.

Evaluation every `eval_every` steps and at the end: `eval/loss` on `config.mae.eval_images` held-out images
with fixed masks, and a picture of reconstructions in <workdir>/reconstructions/<step>.png and TensorBoard.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.data.unlabelled import IMAGE_KINDS, eval_image, image_dataset, image_source
from clipjax.errors import ConfigError
from clipjax.evals.mae import MaeEvaluator
from clipjax.losses.mae import mae_loss
from clipjax.models.mae import MaskedAutoencoder
from clipjax.models.presets import DTYPES, build_image_tower, image_tower_dims, is_mci
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Metrics, Task, train
from clipjax.train.optim import make_optimizer
from clipjax.train.state import TrainState
from clipjax.train.step import training_step

# Kept out of the update: the encoder's fixed sine-cosine position embedding (MAE's requires_grad=False).
FIXED_PARAMETERS = ("pos_embed",)


def build_mae(config: ConfigDict) -> MaskedAutoencoder:
    """The masked autoencoder over the image tower `config.model` describes, with `config.mae`'s decoder."""
    mae = config.mae
    return MaskedAutoencoder(
        build_image_tower(config.model),
        mask_ratio=mae.mask_ratio,
        decoder_width=mae.decoder_width,
        decoder_depth=mae.decoder_depth,
        decoder_heads=mae.decoder_heads,
        decoder_mlp_dim=mae.decoder_mlp_dim,
        dtype=DTYPES[config.model.dtype],
        remat=config.model.remat,
    )


def num_patches(config: ConfigDict) -> int:
    return (config.model.image_size // image_tower_dims(config.model)["patch_size"]) ** 2


def make_init_state(model: MaskedAutoencoder, tx: optax.GradientTransformation, config: ConfigDict):
    """rng -> TrainState at step 0."""

    def init_state(rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        size = config.model.image_size
        variables = model.init(params_rng, jnp.zeros((1, size, size, 3)), jnp.zeros((1, num_patches(config))))
        return TrainState.create(variables, tx, state_rng)

    return init_state


def make_train_step(model: MaskedAutoencoder, tx: optax.GradientTransformation, config: ConfigDict):
    """(state, batch) -> (state, metrics): one AdamW step on MAE's loss. batch: image uint8 [B, S, S, 3]."""
    patch = image_tower_dims(config.model)["patch_size"]

    def loss_fn(params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array):
        noise_rng, dropout_rng = jax.random.split(rng)
        image = {
            name: jax.lax.stop_gradient(value) if name in FIXED_PARAMETERS else value
            for name, value in params["image"].items()
        }
        images = batch["image"]
        noise = jax.random.uniform(noise_rng, (images.shape[0], num_patches(config)))
        out = model.apply({"params": {**params, "image": image}, **model_state}, images, noise,
                          rngs={"dropout": dropout_rng})  # fmt: skip
        return mae_loss(out["pred"], images, out["mask"], patch, config.mae.norm_pix_loss), (model_state, {})

    return training_step(config, tx, loss_fn)


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> Metrics:
    """Pretrains the masked autoencoder as `config` says, in `workdir` (resuming if it holds checkpoints)."""
    train_source = image_source(config, "train")  # first: unreadable data stops the run before any output
    eval_source = image_source(config, "eval")
    model = build_mae(config)
    optim = config.optim.copy_and_resolve_references()
    optim.no_decay = tuple(dict.fromkeys((*optim.no_decay, *FIXED_PARAMETERS)))  # decoupled decay would shrink it
    tx = make_optimizer(optim, config.total_steps)
    mae = config.mae
    evaluator = MaeEvaluator(
        model,
        mesh,
        eval_source,
        lambda record: eval_image(record, config.model.image_size),
        normalize=config.data.normalize,
        norm_pix=mae.norm_pix_loss,
        batch_size=mae.eval_batch_size,
        num_examples=mae.eval_images,
        num_threads=config.eval.num_threads,
        reconstructions=mae.reconstructions,
    )
    task = Task(
        init_state=make_init_state(model, tx, config),
        train_step=make_train_step(model, tx, config),
        dataset=lambda start_sample: image_dataset(
            config,
            train_source,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_sample=start_sample,
        ),
        evaluate=evaluator,
        examples_per_step=config.batch_size,
        throughput_key="train/images_per_s",
        on_evaluated=lambda step, state, metrics: evaluator.write_reconstructions(workdir, step),
    )
    return train(config, workdir, mesh, task)


def validate(config: ConfigDict) -> None:
    """MAE's settings: a ViT encoder, the mask ratio, the decoder, the evaluation sizes."""
    mae = config.mae
    if is_mci(config.model.name):
        raise ConfigError(
            f"config.model.name={config.model.name!r}: MAE drops patches from a ViT's token sequence; an MCi tower "
            "has none (use a vit_* preset)"
        )
    if not 0 < mae.mask_ratio < 1:
        raise ConfigError(f"config.mae.mask_ratio={mae.mask_ratio} must lie in (0, 1)")
    if int(num_patches(config) * (1 - mae.mask_ratio)) < 1:
        raise ConfigError(
            f"config.mae.mask_ratio={mae.mask_ratio} leaves no visible patch of the {num_patches(config)}; lower it"
        )
    for key in ("decoder_width", "decoder_depth", "decoder_heads", "decoder_mlp_dim", "eval_images", "eval_batch_size"):
        if mae[key] < 1:
            raise ConfigError(f"config.mae.{key}={mae[key]} must be at least 1")
    if mae.decoder_width % mae.decoder_heads or mae.decoder_width % 4:
        raise ConfigError(
            f"config.mae.decoder_width={mae.decoder_width} must divide by decoder_heads={mae.decoder_heads} and by 4 "
            "(the sine-cosine position table)"
        )
    if image_tower_dims(config.model)["width"] % 4 and config.model.image.layout == "mae":
        raise ConfigError("config.model.image.width must be divisible by 4 for MAE's sine-cosine position table")
    if mae.reconstructions < 0:
        raise ConfigError(f"config.mae.reconstructions={mae.reconstructions} must be 0 (none) or more")


TASK = TaskSpec(
    name="mae",
    run=run,
    title="MAE",
    validate=validate,
    data_kinds=IMAGE_KINDS,
    init="none",
    batch_keys=("mae.eval_batch_size",),
    metrics=("loss",),
    lower_is_better=("loss",),
)
