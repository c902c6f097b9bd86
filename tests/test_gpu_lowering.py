"""The real pretraining step as lowered for a CUDA GPU, checked without one: cuDNN's flash attention in every
block (forward and backward), no [B, heads, N, N] attention array anywhere, and every matmul of the towers
in bfloat16. JAX lowers for a platform it has no device for (`lowering_platforms`); only its cuDNN version
probe needs a stand-in here."""

import re
import types

import jax
import numpy as np
import pytest

import clipjax.models.layers
from clipjax.models import build_clip
from clipjax.parallel import make_mesh
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.optim import make_optimizer
from tests.helpers import tiny_config

BATCH, IMAGE, LENGTH, EMBED = 24, 32, 8, 16  # distinct sizes, so shapes tell the towers from the loss
PATCHES = (IMAGE // 8) ** 2 + 1  # 17 tokens (odd: cuDNN runs on 18, one masked by length)
DOT = re.compile(r"stablehlo\.dot_general [^\n]*: \((tensor<[^>]*>), (tensor<[^>]*>)\)")


@pytest.fixture
def pretend_cuda(monkeypatch):
    # A JAX that moved its cuDNN probe fails here, on purpose: skipping would silently drop the GPU checks.
    import jax._src.cudnn.fused_attention_stablehlo as fused

    assert hasattr(fused, "cuda_versions"), "JAX's cuDNN version probe moved; update this stand-in"
    # cuDNN 9.10's version, as the CUDA plugin would report it; lowering never calls the library.
    monkeypatch.setattr(fused, "cuda_versions", types.SimpleNamespace(cudnn_get_version=lambda: 91000))
    monkeypatch.setattr(clipjax.models.layers, "accelerator_platform", lambda: "cuda")


def lower_step_for_cuda(attention: str, scan: bool = False, remat: str = "none") -> str:
    """StableHLO text of the bf16 pretraining step (CLIP loss, AdamW) of a tiny CLIP, lowered for CUDA."""
    config = tiny_config({"data": 1, "fsdp": 1})
    config.batch_size = BATCH
    config.model.update(dtype="bfloat16", image_size=IMAGE, attention=attention, scan=scan, remat=remat)
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    state = jax.eval_shape(make_init_state(model, tx, config), jax.random.PRNGKey(0))
    batch = {
        "image": jax.ShapeDtypeStruct((BATCH, IMAGE, IMAGE, 3), np.uint8),
        "text": jax.ShapeDtypeStruct((BATCH, LENGTH), np.int32),
    }
    step = make_train_step(model, tx, config, make_mesh(config.mesh, jax.devices()[:1]))
    return jax.jit(step).trace(state, batch).lower(lowering_platforms=("cuda",)).as_text()


def cudnn_attention_calls(text: str) -> tuple[int, int]:
    """(forward, backward) cuDNN fused-attention custom calls in the program."""
    forward = len(re.findall(r"custom_call @__cudnn\$fmhaSoftmax\(", text))
    return forward, len(re.findall(r"custom_call @__cudnn\$fmhaSoftmaxBackward\(", text))


def attention_arrays(text: str) -> list[str]:
    """Every [B, heads, N, N] array type in the program (either tower, with or without the padded token)."""
    sizes = "|".join(str(n) for n in (PATCHES, PATCHES + 1, LENGTH))
    return re.findall(rf"tensor<{BATCH}x2x({sizes})x\1x\w+>", text)


@pytest.mark.parametrize("scan", [False, True])
def test_gpu_step_runs_cudnn_attention_in_every_block_and_bf16_matmuls(pretend_cuda, scan):
    text = lower_step_for_cuda("auto", scan=scan)
    # 2 image + 2 text blocks; scanned, each tower's loop body holds one block.
    blocks = 2 if scan else 4
    assert cudnn_attention_calls(text) == (blocks, blocks)
    assert attention_arrays(text) == []

    dots = DOT.findall(text)
    in_towers = [pair for pair in dots if f"x{EMBED}xf32>" not in pair[0] + pair[1]]
    # Per block 4 products forward and 8 backward, plus each tower's projection (1 forward, 2 backward).
    assert len(in_towers) == blocks * 12 + 2 * 3
    assert all(a.endswith("xbf16>") and b.endswith("xbf16>") for a, b in in_towers), in_towers
    # The rest is the loss: float32 [B, d] embeddings and [B, B] logit tiles.
    loss_operands = {operand for pair in dots if pair not in in_towers for operand in pair}
    assert loss_operands <= {f"tensor<{BATCH}x{EMBED}xf32>", f"tensor<{BATCH}x{BATCH}xf32>"}, loss_operands
    convolutions = re.findall(r"stablehlo\.convolution[^\n]*", text)
    assert len(convolutions) == 2  # the patch embedding and its kernel's gradient
    for convolution in convolutions:
        assert re.search(r": \(tensor<[0-9x]*bf16>, tensor<[0-9x]*bf16>\)", convolution), convolution


def test_xla_attention_lowering_does_materialise_the_attention_arrays(pretend_cuda):
    # The contrast that shows `attention_arrays` can see them: XLA's attention writes the logits.
    text = lower_step_for_cuda("xla")
    assert "__cudnn$fmha" not in text
    assert attention_arrays(text)


def test_dots_remat_keeps_the_flash_attention_forward(pretend_cuda, monkeypatch):
    # remat="dots" saves the matmuls and cuDNN's attention forward: one forward call per block, as without
    # remat. JAX's plain dots policy alone would run the kernel (a custom call, not a dot) again in the
    # backward pass: two per block.
    assert cudnn_attention_calls(lower_step_for_cuda("auto", remat="dots")) == (4, 4)
    assert cudnn_attention_calls(lower_step_for_cuda("auto", remat="full")) == (8, 4)
    plain = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    monkeypatch.setitem(clipjax.models.layers.REMAT_POLICIES, "dots", plain)
    assert cudnn_attention_calls(lower_step_for_cuda("auto", remat="dots")) == (8, 4)
