"""The detector: ViTDet's window attention against per-window attention, and a tiny Cascade Mask R-CNN on an MCi
tower's FPN: every stage's training losses at their known initial values (GIoU box loss), the tower's BatchNorm
statistics trained, and the detections contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.heads.detection.mask_rcnn import DetectorSettings, MaskRCNN
from clipjax.models.layers import EncoderBlock, window_merge, window_partition
from clipjax.models.mci import MCi
from clipjax.models.vit import VisionTransformer


def test_window_partition_round_trips_with_padding():
    x = jnp.arange(2 * 5 * 7 * 3, dtype=jnp.float32).reshape(2, 35, 3)
    windows = window_partition(x, 5, 7, 3)
    assert windows.shape == (2 * 2 * 3, 9, 3)
    # Window (row 1, col 2) of image 1 holds grid rows 3..5 and columns 6..8, zero past the 5 x 7 grid.
    grid = np.asarray(x).reshape(2, 5, 7, 3)
    expected = np.zeros((3, 3, 3), np.float32)
    expected[:2, :1] = grid[1, 3:5, 6:7]
    np.testing.assert_array_equal(np.asarray(windows[6 + 5]).reshape(3, 3, 3), expected)
    np.testing.assert_array_equal(np.asarray(window_merge(windows, 2, 5, 7, 3)), np.asarray(x))


def test_a_windowed_block_attends_within_each_window_only():
    block = EncoderBlock(num_heads=2, mlp_dim=32, window=(4, 6, 2))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 24, 16))
    variables = block.init(jax.random.PRNGKey(1), x)
    out = np.asarray(jax.jit(block.apply)(variables, x)[0]).reshape(2, 4, 6, 16)
    global_apply = jax.jit(EncoderBlock(num_heads=2, mlp_dim=32).apply)
    grid = np.asarray(x).reshape(2, 4, 6, 16)
    for i in range(2):
        for j in range(3):
            tokens = grid[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(2, 4, 16)
            alone = np.asarray(global_apply(variables, jnp.asarray(tokens))[0])
            window = out[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(2, 4, 16)
            np.testing.assert_allclose(window, alone, atol=1e-5)


def test_a_vit_with_windows_drops_cls_and_keeps_clips_parameters():
    plain = VisionTransformer(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, embed_dim=16)
    windowed = plain.clone(window_size=2, global_blocks=(1,))
    images = jnp.zeros((1, 32, 32, 3))
    variables = jax.jit(plain.init)(jax.random.PRNGKey(0), images)
    shapes = jax.tree.map(jnp.shape, jax.eval_shape(windowed.init, jax.random.PRNGKey(0), images))
    assert shapes == jax.tree.map(jnp.shape, variables)  # CLIP checkpoints load unchanged
    out = jax.jit(windowed.apply)(variables, jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3)))
    assert out["tokens"].shape == (2, 16, 32) and out["grid"] == (4, 4)


@pytest.fixture(scope="module")
def cascade():
    # Cascade Mask R-CNN on an MCi tower's FPN with the classic heads (2fc box heads, no head norms): one
    # compiled model for the stages, the FPN path and the tower's BatchNorms (ViTs: tests/test_detect_task.py).
    tower = MCi(depths=(1, 1, 1, 1), widths=(8, 16, 16, 32), num_classes=16)
    settings = DetectorSettings(
        stage_ious=(0.5, 0.6, 0.7), box_loss="giou", rpn_convs=1, rpn_pre_nms=(200, 100), rpn_post_nms=(100, 50),
        roi_samples=64, box_conv_dims=(), box_fc_dims=(32, 32), head_norm=False, mask_head_convs=1,
        mask_head_channels=16, pre_nms_candidates=200, detections_per_image=10,
    )  # fmt: skip
    model = MaskRCNN(tower, 3, settings, pyramid_channels=16)
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 128, 128, 3))
    # A jitted init: op-by-op, the detector's inference path (which init runs) takes far longer.
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), images[:1]), images


# Slow (about 45 s on 2 cores): left out of the default run, run with `python -m pytest -q -n 2 -m slow`.
@pytest.mark.slow
def test_cascade_trains_every_stage_and_the_towers_batch_norms_from_known_initial_losses(cascade):
    model, variables, images = cascade
    params = variables["params"]
    assert {"neck", "rpn", "mask_head"} | {f"box_head_{k}" for k in range(3)} <= set(params)
    assert "pyramid" not in params and set(params["box_head_0"]) == {"fc_0", "fc_1"}  # FPN, classic 2fc head
    targets = {
        "boxes": jnp.array([[[10, 10, 60, 70.0], [0, 0, 0, 0]], [[30, 40, 100, 90], [5, 5, 40, 40]]]),
        "classes": jnp.array([[1, -1], [0, 2]]),
        "masks": jnp.ones((2, 2, 16, 16), jnp.uint8),
    }
    sizes = jnp.array([[128, 128], [100, 120]])
    sampling = {"sampling": jax.random.PRNGKey(1)}

    def loss(params):
        losses, updates = model.apply(
            {**variables, "params": params}, images, sizes, targets, train=True, rngs=sampling,
            mutable=["batch_stats"],
        )  # fmt: skip
        return sum(losses.values()), (losses, updates)

    (_, (losses, updates)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    names = {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"} | {f"loss_{k}_{i}" for k in ("cls", "box") for i in range(3)}
    assert set(losses) == names
    # Near-zero initial logits: binary cross-entropies of log 2, softmax over 3 classes + background of log 4.
    assert float(losses["loss_rpn_cls"]) == pytest.approx(np.log(2), abs=0.01)
    assert float(losses["loss_mask"]) == pytest.approx(np.log(2), abs=0.01)
    for i in range(3):
        assert float(losses[f"loss_cls_{i}"]) == pytest.approx(np.log(4), abs=0.05)
        assert 0 < float(losses[f"loss_box_{i}"]) < 1
        assert float(jnp.abs(grads[f"box_predictor_{i}"]["bbox_pred"]["kernel"]).max()) > 0
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    moved = jax.tree.map(lambda a, b: bool((a != b).any()), updates["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(moved))  # every BatchNorm of the tower learned from the batch
    with pytest.raises(ValueError, match="mutable"):
        jax.eval_shape(lambda v: model.apply(v, images, sizes, targets, train=True, rngs=sampling), variables)


def test_detections_are_sorted_clipped_and_within_the_image(cascade):
    model, variables, images = cascade
    sizes = jnp.array([[128, 128], [96, 64]])
    out = jax.jit(model.apply)(variables, images, sizes)
    assert out["boxes"].shape == (2, 10, 4) and out["masks"].shape == (2, 10, 28, 28)
    assert out["classes"].dtype == jnp.int32 and out["valid"].dtype == jnp.bool_
    for b, (h, w) in enumerate(np.asarray(sizes)):
        valid = np.asarray(out["valid"][b])
        boxes, scores = np.asarray(out["boxes"][b])[valid], np.asarray(out["scores"][b])[valid]
        assert valid.any() and (np.diff(scores) <= 0).all() and (scores > 0.05).all()
        assert (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all() and (boxes >= 0).all()
        assert ((0 <= np.asarray(out["masks"][b])) & (np.asarray(out["masks"][b]) <= 1)).all()
        assert set(np.asarray(out["classes"][b])[valid]) <= {0, 1, 2}
