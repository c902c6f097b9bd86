"""The pretraining step's loss for each caption policy."""

import functools

import jax
import numpy as np

from clipjax.data.transforms import normalize_images
from clipjax.losses import clip_loss, siglip_loss
from clipjax.models import CLIP, build_clip
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.optim import make_optimizer
from tests.helpers import tiny_config


def test_both_captions_sum_the_real_and_synthetic_losses():
    config = tiny_config({"data": 1, "fsdp": 1})
    config.data.captions = "both"
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    state = jax.jit(make_init_state(model, tx, config))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    texts = rng.integers(1, 1000, (2, 16, 8)).astype(np.int32)
    texts[:, :, -1] = 49407
    batch = {
        "image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        "text": texts[0],
        "text_synthetic": texts[1],
    }
    _, metrics = jax.jit(make_train_step(model, tx, config))(state, batch)

    variables = {"params": state.params}
    images = normalize_images(batch["image"], config.data.normalize)
    image_emb = jax.jit(functools.partial(model.apply, method=CLIP.encode_image))(variables, images)
    encode_text = jax.jit(functools.partial(model.apply, method=CLIP.encode_text))
    scale = np.exp(state.params["logit_scale"])
    expected = sum(
        clip_loss(image_emb, encode_text(variables, batch[key]), scale) for key in ("text", "text_synthetic")
    )
    np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/temperature"], 0.07, rtol=1e-5)


def test_siglip_step_uses_the_bias_parameter():
    config = tiny_config({"data": 1, "fsdp": 1})
    config.loss.kind = "siglip"
    config.model.update(logit_bias_init=-10.0, temperature_init=0.1)
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    state = jax.jit(make_init_state(model, tx, config))(jax.random.PRNGKey(0))
    assert float(state.params["logit_bias"]) == -10.0
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 1000, (16, 8)).astype(np.int32)
    tokens[:, -1] = 49407
    batch = {"image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), "text": tokens}
    new_state, metrics = jax.jit(make_train_step(model, tx, config))(state, batch)

    images = normalize_images(batch["image"], config.data.normalize)
    image_emb, text_emb, scale = jax.jit(model.apply)({"params": state.params}, images, batch["text"])
    expected = siglip_loss(image_emb, text_emb, scale, state.params["logit_bias"], impl="naive")
    np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/logit_bias"], -10.0)
    assert float(new_state.params["logit_bias"]) != -10.0  # the bias learns
