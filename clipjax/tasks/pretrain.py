"""CLIP pretraining: contrastive loss over the global batch, zero-shot evaluation on held-out scenes."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.config import choice
from clipjax.data.pretrain import CAPTION_POLICIES, PRETRAIN_KINDS, captionless_kind, pretrain_dataset, pretrain_source
from clipjax.errors import ConfigError
from clipjax.evals.setup import ZEROSHOT_AND_RETRIEVAL_METRICS, make_evaluator
from clipjax.losses import clip_distillation_losses, clip_loss, siglip_loss
from clipjax.losses.contrastive import IMPLEMENTATIONS, LOSS_KINDS
from clipjax.models import CLIP, build_clip, clamp_logit_scale
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Metrics, Task, train
from clipjax.train.optim import make_optimizer
from clipjax.train.state import TrainState
from clipjax.train.step import apply_model, training_step


def make_init_state(model: CLIP, tx: optax.GradientTransformation, config: ConfigDict):
    """rng -> TrainState at step 0 (parameters from dummy inputs of the configured shapes)."""

    def init_state(rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        size = config.model.image_size
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        tokens = jnp.zeros((1, config.model.text.context_length), jnp.int32)
        return TrainState.create(model.init(params_rng, images, tokens), tx, state_rng)

    return init_state


def make_train_step(model: CLIP, tx: optax.GradientTransformation, config: ConfigDict, mesh: Mesh | None = None):
    """(state, batch) -> (state, metrics): one AdamW step on the contrastive loss of the global batch.

    batch: image uint8 [B, S, S, 3], text int32 [B, L], and with captions="both" text_synthetic int32
    [B, L], whose loss against the same images is added (MobileCLIP's recipe). With config.loss.distill_weight
    w > 0 also teacher_image, teacher_text (, teacher_text_synthetic) float32 [B, D]: each pair's loss is
    (1 - w) CLIP + w KD, logged beside as train/clip_loss and train/distill_loss. With a `mesh`, the fused
    loss runs sharded over its batch axes.
    """
    options = {"impl": config.loss.impl, "mesh": mesh, "block_size": config.loss.block_size}
    distill_weight = config.loss.distill_weight

    def contrastive(params: Any, image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array) -> jax.Array:
        if config.loss.kind == "siglip":
            return siglip_loss(image_emb, text_emb, scale, params["logit_bias"], **options)
        return clip_loss(image_emb, text_emb, scale, **options)

    def pair_loss(
        params: Any,
        batch: dict[str, jax.Array],
        image_emb: jax.Array,
        text_emb: jax.Array,
        scale: jax.Array,
        teacher_key: str,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The loss [] of one caption batch against the images, and its parts when distilling ({} otherwise);
        `teacher_key` names the batch's teacher embeddings of these captions."""
        if distill_weight == 0:
            return contrastive(params, image_emb, text_emb, scale), {}
        clip, kd = clip_distillation_losses(
            image_emb,
            text_emb,
            scale,
            batch["teacher_image"],
            batch[teacher_key],
            teacher_dims=tuple(config.loss.teacher_dims),
            teacher_scale=config.loss.teacher_scale,
            **options,
        )
        return (1.0 - distill_weight) * clip + distill_weight * kd, {"clip": clip, "distill": kd}

    def loss_fn(params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, tuple]:
        variables = {"params": params, **model_state}
        # Stochastic depth (config.model.drop_path; unused at rate 0); MCi BatchNorms on the global batch.
        (image_emb, text_emb, scale), model_state = apply_model(
            model,
            variables,
            batch["image"],
            batch["text"],
            update_batch_stats=config.model.batch_norm == "train",
            rngs={"dropout": rng},
        )
        loss, parts = pair_loss(params, batch, image_emb, text_emb, scale, "teacher_text")
        if "text_synthetic" in batch:
            synthetic_emb = model.apply(variables, batch["text_synthetic"], method=CLIP.encode_text)
            synthetic, synthetic_parts = pair_loss(
                params, batch, image_emb, synthetic_emb, scale, "teacher_text_synthetic"
            )
            # Summed over the two caption batches, each part too (as MobileCLIP's DRClipLoss).
            loss = loss + synthetic
            parts = {name: value + synthetic_parts[name] for name, value in parts.items()}
        metrics = {
            **{f"train/{name}_loss": value for name, value in parts.items()},
            "train/temperature": 1.0 / scale,
            "train/logit_scale": scale,
        }
        if "logit_bias" in params:  # the value the step used, like the scale
            metrics["train/logit_bias"] = params["logit_bias"]
        return loss, (model_state, metrics)

    constrain = functools.partial(clamp_logit_scale, max_scale=config.model.logit_scale_max)
    return training_step(config, tx, loss_fn, constrain)


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> Metrics:
    """Pretrains CLIP as `config` says, in `workdir` (resuming if it holds checkpoints)."""
    source = pretrain_source(config)  # first: an unreadable data config stops the run before any output
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    pairs_per_image = 2 if config.data.captions == "both" else 1
    task = Task(
        init_state=make_init_state(model, tx, config),
        train_step=make_train_step(model, tx, config, mesh),
        dataset=lambda start_sample: pretrain_dataset(
            config,
            source,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_sample=start_sample,
        ),
        evaluate=make_evaluator(model, mesh, config),
        examples_per_step=config.batch_size * pairs_per_image,
        checkpoint_keys=TASK.checkpoint_keys,
    )
    return train(config, workdir, mesh, task)


def validate(config: ConfigDict) -> None:
    """Pretraining's settings: captions, the contrastive loss, distillation."""
    data, loss = config.data, config.loss
    if data.kind not in PRETRAIN_KINDS:
        raise ConfigError(captionless_kind(data.kind))
    choice("config.data.captions", data.captions, CAPTION_POLICIES)
    choice("config.loss.impl", loss.impl, IMPLEMENTATIONS)
    choice("config.loss.kind", loss.kind, LOSS_KINDS)
    if loss.block_size < 1:
        raise ConfigError(f"config.loss.block_size={loss.block_size} must be at least 1")
    if loss.kind == "siglip" and config.model.logit_bias_init is None:
        raise ConfigError(
            "config.loss.kind='siglip' needs a logit bias: set config.model.logit_bias_init=-10 "
            "(and config.model.temperature_init=0.1, SigLIP's initial scale of 10)"
        )
    if not 0.0 <= data.synthetic_prob <= 1.0:
        raise ConfigError(f"config.data.synthetic_prob={data.synthetic_prob} must lie in [0, 1]")
    if data.kind == "webdataset" and data.captions == "bag":
        raise ConfigError(
            "config.data.captions='bag' is the built-in scenes' bag-of-words caption; webdataset shards have "
            "'real', 'synthetic', 'mixed' or 'both'"
        )
    if data.kind == "webdataset" and data.captions != "real" and not data.synthetic_path:
        raise ConfigError(
            f"config.data.captions={data.captions!r} needs synthetic captions: pass the DataCompDR shards, e.g. "
            "--config.data.synthetic_path=/data/datacompdr/{00000..00099}.tar, or use --config.data.captions=real"
        )
    # Distillation from DataCompDR's stored teacher embeddings.
    if not 0.0 <= loss.distill_weight <= 1.0:
        raise ConfigError(f"config.loss.distill_weight={loss.distill_weight} must lie in [0, 1] (0: no distillation)")
    if loss.distill_weight == 0:
        return
    if loss.kind != "clip":
        raise ConfigError(f"config.loss.distill_weight needs config.loss.kind='clip', not {loss.kind!r}")
    if data.kind != "webdataset" or not data.synthetic_path:
        raise ConfigError(
            "config.loss.distill_weight > 0 reads the teacher embeddings stored in DataCompDR shards: set "
            "config.data.kind='webdataset' and config.data.synthetic_path=/data/datacompdr/{00000..00099}.tar"
        )
    if data.flip:
        raise ConfigError(
            "config.data.flip must be False with distillation: the stored augmentation is replayed as the "
            "teacher saw it"
        )
    dims = tuple(loss.teacher_dims)
    if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(f"config.loss.teacher_dims={dims} must be the positive widths of the teacher's members")
    if not loss.teacher_scale > 0:
        raise ConfigError(f"config.loss.teacher_scale={loss.teacher_scale} must be positive")


TASK = TaskSpec(
    name="pretrain",
    run=run,
    title="pretraining",
    validate=validate,
    data_kinds=PRETRAIN_KINDS,
    init="none",
    metrics=ZEROSHOT_AND_RETRIEVAL_METRICS,
    checkpoint_keys=("loss.kind",),  # CLIP and SigLIP checkpoints differ in their parameters (the logit bias)
)
