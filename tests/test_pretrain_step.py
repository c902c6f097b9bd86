"""The pretraining step's loss for each caption policy, with and without distillation."""

import functools

import jax
import numpy as np

from clipjax.data.transforms import normalize_images
from clipjax.losses import clip_distillation_losses, clip_loss, siglip_loss
from clipjax.models import CLIP, build_clip
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.optim import make_optimizer
from tests.helpers import tiny_config


def both_captions_step(config, rng, **extra):
    """One step of `config` on a random batch with real and synthetic captions and any `extra` fields.

    Returns:
      (metrics, batch, the images' embeddings [16, 16] under the initial parameters, text tokens -> their
      embeddings under the same, the initial logit scale).
    """
    config.data.captions = "both"
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    state = jax.jit(make_init_state(model, tx, config))(jax.random.PRNGKey(0))
    texts = rng.integers(1, 1000, (2, 16, 8)).astype(np.int32)
    texts[:, :, -1] = 49407
    batch = {
        "image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        "text": texts[0],
        "text_synthetic": texts[1],
        **extra,
    }
    _, metrics = jax.jit(make_train_step(model, tx, config))(state, batch)

    variables = {"params": state.params}
    images = normalize_images(batch["image"], config.data.normalize)
    image_emb = jax.jit(functools.partial(model.apply, method=CLIP.encode_image))(variables, images)
    encode_text = jax.jit(functools.partial(model.apply, method=CLIP.encode_text))
    return metrics, batch, image_emb, lambda tokens: encode_text(variables, tokens), np.exp(state.params["logit_scale"])


def test_both_captions_sum_the_real_and_synthetic_losses():
    metrics, batch, image_emb, encode_text, scale = both_captions_step(
        tiny_config({"data": 1, "fsdp": 1}), np.random.default_rng(0)
    )
    expected = sum(clip_loss(image_emb, encode_text(batch[key]), scale) for key in ("text", "text_synthetic"))
    np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/temperature"], 0.07, rtol=1e-5)


def one_caption_step(config, seed):
    """One step of `config` from its initial state on a random batch of one caption per image: (model, initial
    state, new state, metrics, batch)."""
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    state = jax.jit(make_init_state(model, tx, config))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 1000, (16, 8)).astype(np.int32)
    tokens[:, -1] = 49407
    batch = {"image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), "text": tokens}
    new_state, metrics = jax.jit(make_train_step(model, tx, config))(state, batch)
    return model, state, new_state, metrics, batch


def test_siglip_step_uses_the_bias_parameter():
    config = tiny_config({"data": 1, "fsdp": 1})
    config.loss.kind = "siglip"
    config.model.update(logit_bias_init=-10.0, temperature_init=0.1)
    model, state, new_state, metrics, batch = one_caption_step(config, 1)
    assert float(state.params["logit_bias"]) == -10.0
    images = normalize_images(batch["image"], config.data.normalize)
    image_emb, text_emb, scale = jax.jit(model.apply)({"params": state.params}, images, batch["text"])
    expected = siglip_loss(image_emb, text_emb, scale, state.params["logit_bias"], impl="naive")
    np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/logit_bias"], -10.0)
    assert float(new_state.params["logit_bias"]) != -10.0  # the bias learns


def test_distillation_weighs_clip_and_kd_per_caption_batch_with_that_batchs_teacher_texts():
    config = tiny_config({"data": 1, "fsdp": 1})
    config.loss.update(distill_weight=0.75, teacher_dims=(4, 6))
    rng = np.random.default_rng(2)
    teacher = rng.normal(size=(3, 16, 10)).astype(np.float32)
    metrics, batch, image_emb, encode_text, scale = both_captions_step(
        config, rng, teacher_image=teacher[0], teacher_text=teacher[1], teacher_text_synthetic=teacher[2]
    )
    # Each caption batch is scored against its own teacher texts (random, so a mix-up would show).
    clip, kd = 0.0, 0.0
    for key in ("text", "text_synthetic"):
        parts = clip_distillation_losses(
            image_emb,
            encode_text(batch[key]),
            scale,
            teacher[0],
            batch[f"teacher_{key}"],
            teacher_dims=(4, 6),
            teacher_scale=config.loss.teacher_scale,
            impl="naive",
        )
        clip, kd = clip + parts[0], kd + parts[1]
    np.testing.assert_allclose(metrics["train/clip_loss"], clip, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/distill_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/loss"], 0.25 * clip + 0.75 * kd, rtol=1e-5)


def test_drop_path_acts_in_pretraining_steps_with_the_steps_own_key():
    """Stochastic depth in the pretraining step: the loss is the model's with the dropout key of the step
    (fold_in(state.rng, step)), not the deterministic one."""
    config = tiny_config({"data": 1, "fsdp": 1})
    config.model.drop_path = 0.5
    model, state, _, metrics, batch = one_caption_step(config, 2)
    images = normalize_images(batch["image"], config.data.normalize)

    def loss(rngs):
        return clip_loss(*model.apply({"params": state.params}, images, batch["text"], rngs=rngs), impl="naive")

    dropped = loss({"dropout": jax.random.fold_in(state.rng, 0)})
    np.testing.assert_allclose(metrics["train/loss"], dropped, rtol=1e-5)
    assert abs(float(dropped) - float(loss({}))) > 1e-3  # a block was dropped for some samples
