"""Mean attention distance: the distance against a brute-force numpy oracle, identity and uniform attention in
closed form, a converted open_clip ViT-B/16 against the maps of open_clip's own PyTorch modules, MCi's attention
stage, the command line's JSON, picture and metrics against the oracle, and the one-line refusals."""

import json
import os

import jax.numpy as jnp
import numpy as np
import open_clip  # the test extra installs it (with PyTorch)
import pytest
import torch

from clipjax.config import load_config
from clipjax.convert.openclip import convert_open_clip, open_clip_model_config, open_clip_normalize
from clipjax.data.classification import classification_source
from clipjax.data.images import center_crop
from clipjax.data.transforms import normalize_images
from clipjax.errors import ConfigError
from clipjax.evals.attention_distance import (
    attention_distances,
    attention_layout,
    patch_distances,
    tower_attention,
    uniform_attention_distance,
)
from clipjax.evals.batches import labelled_image_loader
from clipjax.main import main
from clipjax.models.presets import build_image_tower
from clipjax.tasks.analyze import checkpoint_config
from clipjax.train.metrics import read_metrics
from clipjax.train.transfer import frozen_tower
from clipjax.validation import validate
from tests.helpers import tiny_mci_with_random_variables
from tests.photos import photo


def oracle(attention: np.ndarray, grid: tuple[int, int], patch_px: int, renormalise: bool) -> np.ndarray:
    """[B, heads] by loops over every query and key, the distance from the patches' (row, col) centres."""
    batch, heads, tokens, _ = attention.shape
    patches = grid[0] * grid[1]
    prefix = tokens - patches
    centres = [((i // grid[1] + 0.5) * patch_px, (i % grid[1] + 0.5) * patch_px) for i in range(patches)]
    out = np.zeros((batch, heads))
    for b in range(batch):
        for h in range(heads):
            total = 0.0
            for i in range(patches):
                row = attention[b, h, prefix + i, prefix:].astype(np.float64)
                if renormalise:
                    row = row / row.sum()
                total += sum(row[j] * np.hypot(*np.subtract(centres[i], centres[j])) for j in range(patches))
            out[b, h] = total / patches
    return out


def closed_form_uniform(side: int, patch_px: int) -> float:
    """The mean distance between two patches of a side x side grid drawn independently: offset (dx, dy) occurs
    (side - |dx|)(side - |dy|) times among the side^4 ordered pairs."""
    offsets = np.arange(-side + 1, side)
    count = np.outer(side - np.abs(offsets), side - np.abs(offsets))
    return float(patch_px * (count * np.hypot(*np.meshgrid(offsets, offsets))).sum() / side**4)


@pytest.mark.parametrize("renormalise", [True, False])
def test_distances_match_the_brute_force_oracle(renormalise):
    rng = np.random.default_rng(0)
    grid, prefix = (3, 4), 2  # a CLS token and a register
    logits = rng.normal(size=(2, 3, prefix + 12, prefix + 12)) * 2
    attention = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    distances = jnp.asarray(patch_distances(grid, 16))
    got = attention_distances(jnp.asarray(attention, jnp.float32), distances, renormalise)
    np.testing.assert_allclose(np.asarray(got), oracle(attention, grid, 16, renormalise), rtol=1e-5)


def test_identity_attention_gives_0_and_uniform_attention_the_grid_mean():
    side, patch_px = 5, 14
    distances = jnp.asarray(patch_distances((side, side), patch_px))
    identity = np.zeros((1, 2, 26, 26), np.float32)
    identity[:, :, np.arange(26), np.arange(26)] = 1.0  # CLS attends to itself, each patch to itself
    for renormalise in (True, False):
        assert np.all(np.asarray(attention_distances(jnp.asarray(identity), distances, renormalise)) == 0.0)
    uniform = np.full((1, 2, 26, 26), 1 / 26, np.float32)  # over CLS and the 25 patches
    want = closed_form_uniform(side, patch_px)
    assert uniform_attention_distance((side, side), patch_px) == pytest.approx(want, rel=1e-12)
    got = np.asarray(attention_distances(jnp.asarray(uniform), distances, True))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Without renormalising, the CLS key's share (1/26) counts as distance 0.
    unrenormalised = np.asarray(attention_distances(jnp.asarray(uniform), distances, False))
    np.testing.assert_allclose(unrenormalised, want * 25 / 26, rtol=1e-6)


def test_a_converted_open_clip_vit_b16_gives_the_distances_of_open_clips_own_attention_maps():
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    config = open_clip_model_config("ViT-B-16")
    state_dict = {key: value.detach().numpy() for key, value in reference.state_dict().items()}
    variables = {"params": convert_open_clip(state_dict, config)["params"]["image"]}
    tower = build_image_tower(config)
    images = np.stack([center_crop(photo(name), 224) for name in ("astronaut", "coffee")])
    images = np.asarray(normalize_images(images, open_clip_normalize("ViT-B-16")))

    # open_clip's blocks call nn.MultiheadAttention without weights: the inputs each gets are kept, and the same
    # modules are asked again for their weights once the hooks are gone.
    inputs = []
    blocks = reference.visual.transformer.resblocks
    hooks = [block.attn.register_forward_pre_hook(lambda m, args: inputs.append((m, args[:3]))) for block in blocks]
    with torch.no_grad():
        reference.encode_image(torch.tensor(images).permute(0, 3, 1, 2))
        for hook in hooks:
            hook.remove()
        maps = [m(*qkv, need_weights=True, average_attn_weights=False)[1].numpy() for m, qkv in inputs]
    assert len(maps) == 12 and maps[0].shape == (2, 12, 197, 197)

    grid, patch_px = attention_layout(tower, 224)
    assert (grid, patch_px) == ((14, 14), 16)
    distances = jnp.asarray(patch_distances(grid, patch_px))
    ours = tower_attention(tower, variables, jnp.asarray(images))  # op by op: no compile of a ViT-B/16
    for renormalise in (True, False):
        got = np.stack([np.asarray(attention_distances(a, distances, renormalise)) for a in ours])
        # Vectorised numpy on open_clip's maps (the loop oracle above, agreed with it on random maps).
        want = np.stack([numpy_distances(m, patch_distances(grid, patch_px), renormalise) for m in maps])
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-3)


def numpy_distances(attention: np.ndarray, distances: np.ndarray, renormalise: bool) -> np.ndarray:
    """[B, heads] in float64 numpy."""
    prefix = attention.shape[-1] - len(distances)
    weights = attention[:, :, prefix:, prefix:].astype(np.float64)
    if renormalise:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return (weights * distances).sum(axis=-1).mean(axis=-1)


def test_an_mci_tower_gives_its_stage_4_attention_and_a_windowed_vit_is_refused():
    tower, variables, images = tiny_mci_with_random_variables(width=64)
    maps = tower_attention(tower, variables, images)
    assert attention_layout(tower, 64) == ((2, 2), 32)
    assert [m.shape for m in maps] == [(2, 2, 4, 4)]  # 1 block, 64 / 32 heads, the 2 x 2 stride-32 grid
    np.testing.assert_allclose(np.asarray(maps[0]).sum(axis=-1), 1.0, rtol=1e-5)

    from clipjax.models.vit import VisionTransformer

    windowed = VisionTransformer(width=8, depth=1, num_heads=1, mlp_dim=8, patch_size=8, embed_dim=8, window_size=2)
    with pytest.raises(ConfigError, match="attends within windows") as error:
        attention_layout(windowed, 32)
    assert "\n" not in str(error.value)


def test_the_command_writes_distances_a_picture_and_metrics_for_each_checkpoint(smoke_pretraining, tmp_path):
    smoke, status, _ = smoke_pretraining
    assert status == 0
    workdir = tmp_path / "analysis"
    inits = f'("{smoke}", "{os.path.join(smoke, "checkpoints")}")'  # the workdir, and its checkpoint directory
    flags = [
        "--config=configs/analyze/attention_distance.py:images=12",
        f"--config.analyze.inits={inits}",
        "--config.analyze.batch_size=8",
        f"--workdir={workdir}",
        "--config.progress_bar=False",
    ]
    assert main(flags) == 0
    with open(workdir / "attention_distance.json") as f:
        results = json.load(f)
    first, second = results["checkpoints"]
    assert first["images"] == 12 and first["renormalised"] == second["renormalised"]  # the same weights
    with open(workdir / "attention_distance.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(workdir / "attention_distance.png") > 5000
    (row,) = read_metrics(str(workdir))
    mean = np.asarray(first["renormalised"]["mean"])
    assert row[f"attention_distance/{os.path.basename(smoke)}/mean_px"] == pytest.approx(mean.mean())
    assert row["attention_distance/checkpoints/last_block_head_std_px"] == pytest.approx(mean[-1].std())

    # The oracle on the smoke tower's own maps of the same 12 held-out scenes, at the same crop.
    config, _ = checkpoint_config(load_config("configs/analyze/attention_distance.py:images=12"), smoke)
    assert config.model.image_size == 32  # the smoke pretraining's
    tower, variables = frozen_tower(config)
    source = classification_source(config, "eval")
    load = labelled_image_loader(config.model.image_size, config.finetune.eval_crop_ratio)
    images = normalize_images(np.stack([load(source[i])["image"] for i in range(12)]), config.data.normalize)
    maps = [np.asarray(a) for a in tower_attention(tower, variables, images)]
    grid, patch_px = attention_layout(tower, config.model.image_size)
    assert first["grid"] == list(grid) and first["uniform"] == pytest.approx(closed_form_uniform(grid[0], patch_px))
    for variant, renormalise in (("renormalised", True), ("unrenormalised", False)):
        want = np.stack([oracle(m, grid, patch_px, renormalise).mean(axis=0) for m in maps])
        np.testing.assert_allclose(np.asarray(first[variant]["mean"]), want, rtol=1e-4)
        np.testing.assert_allclose(first[variant]["across_head_std"], want.std(axis=1), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([], "config.analyze.inits is empty"),
        ([("analyze.inits", '("a",)'), ("init", "b")], "are both set"),
        ([("analyze.inits", '("a",)'), ("analyze.kind", "cka")], "config.analyze.kind='cka' is not one of"),
        ([("analyze.inits", '("a",)'), ("analyze.num_images", "0")], "must be at least 1"),
        ([("analyze.inits", '("a",)'), ("data.kind", "ade20k"), ("data.path", "/x")], "config.data.kind"),
    ],
)
def test_analysis_config_errors_are_one_line(overrides, message):
    config = load_config("configs/analyze/attention_distance.py", overrides)
    with pytest.raises(ConfigError) as error:
        validate(config, num_devices=8, process_count=1)
    assert message in str(error.value) and "\n" not in str(error.value)
