"""MobileCLIP MCi encoders: timm's fastvit_mci0/1/2 converted to clipjax give timm's embeddings and stage
features; reparameterisation keeps the function; misfit checkpoints are named; parameter counts match."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from clipjax.convert.fastvit import ConversionError, fastvit_to_mci  # noqa: E402
from clipjax.models.mci import MCI_PRESETS, MCi, build_mci, reparameterize  # noqa: E402

NAMES = ["mci0", "mci1", "mci2"]
# Full numerical parity for mci0 and mci2 (both widths); mci1 is mci0's widths at other depths, checked for
# key-by-key shape agreement (conversion) and parameter count, to keep the file fast on 2 CPU cores.
PARITY = [
    "mci0"
]  # MCi1/2 are MCi0 at other depths and widths: their shapes are checked with MobileCLIP-S1/S2 (test_convert.py)
SIZE = (64, 96)  # non-square, so a swapped height and width cannot pass
REPORTED_MILLIONS = {"mci0": 11.4, "mci1": 21.5, "mci2": 35.7}  # MobileCLIP paper, image encoder parameters


def rel_err(got, want) -> float:
    """Max abs difference relative to the reference's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@functools.cache
def images() -> np.ndarray:
    """Two real photos resized to SIZE, floats in [0, 1] (MobileCLIP's input range): [2, 64, 96, 3] float32."""
    photos = [skimage.data.astronaut(), skimage.data.chelsea()]
    return np.stack([skimage.transform.resize(p, SIZE, anti_aliasing=True) for p in photos]).astype(np.float32)


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights, BatchNorm affine and running statistics, so every fold and branch is exercised.

    Layer scales go from timm's 1e-5 (blocks ~ identity, bugs in them invisible) to 0.02-0.1: large enough for
    every block to matter, small enough that activations stay O(1) through 44 blocks (larger ones saturate
    the stage-4 softmax, where float32 rounding is then amplified beyond any useful tolerance).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            if key.endswith("running_var") or (t.ndim == 1 and key.endswith("weight")):  # BN var and gamma
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif key.endswith(".gamma"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.08 + 0.02)
            elif t.ndim >= 2:  # conv / linear weights, variance-preserving
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
            else:  # biases and running means
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


@functools.cache
def timm_model(name: str) -> torch.nn.Module:
    """timm's fastvit_{name} with MobileCLIP's 512-d head, in eval mode (built once: ~2 s each)."""
    return timm.create_model(f"fastvit_{name}", pretrained=False, num_classes=512).eval()


@functools.cache
def reference(name: str) -> dict:
    """A randomised timm model, its state dict, its outputs on images(), and the converted model's."""
    model = timm_model(name)
    randomise(model)
    state_dict = {key: value.numpy() for key, value in model.state_dict().items()}
    x = torch.tensor(images()).permute(0, 3, 1, 2)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        pooled = model.forward_head(final, pre_logits=True)
        want = {
            "embedding": model.forward_head(final).numpy(),
            "pooled": pooled.numpy(),
            "features": [s.permute(0, 2, 3, 1).numpy() for s in stages],
        }
    variables = fastvit_to_mci(state_dict, name)
    apply = jax.jit(build_mci(name).apply)  # kept: reusing it with other variables needs no new compile
    got = apply(variables, images())
    return {"model": model, "state_dict": state_dict, "variables": variables, "apply": apply, "want": want, "got": got}


@pytest.mark.parametrize("name", PARITY)
def test_converted_model_gives_timms_embedding(name):
    ref = reference(name)
    assert ref["got"]["embedding"].shape == (2, 512)
    assert rel_err(ref["got"]["embedding"], ref["want"]["embedding"]) < 1e-4
    assert rel_err(ref["got"]["pooled"], ref["want"]["pooled"]) < 1e-4
    # The two photos give clearly different embeddings: the model is not degenerate at this scale.
    assert rel_err(ref["got"]["embedding"][0], ref["got"]["embedding"][1]) > 1e-2


@pytest.mark.parametrize("name", PARITY)
def test_stage_features_are_timms_intermediates(name):
    ref = reference(name)
    features = ref["got"]["features"]
    assert sorted(features) == [4, 8, 16, 32]
    for (stride, got), want, width in zip(
        sorted(features.items()), ref["want"]["features"], MCI_PRESETS[name]["widths"]
    ):
        assert got.shape == (2, SIZE[0] // stride, SIZE[1] // stride, width)
        assert rel_err(got, want) < 1e-4, stride


def test_parity_test_sees_batch_statistics():
    """The parity tolerance is tight enough to catch a BatchNorm handled wrongly deep in the network."""
    ref = reference("mci0")
    variables = jax.tree.map(np.copy, ref["variables"])
    stats = variables["batch_stats"]["stages_2"]["blocks_9"]["token_mixer"]["mixer"]["conv_kxk_0"]["bn"]
    stats["var"] = stats["var"] * 1.1  # e.g. a forgotten epsilon would be a far smaller change than this
    got = ref["apply"](variables, images())
    assert rel_err(got["embedding"], ref["want"]["embedding"]) > 1e-3


def test_reparameterized_model_gives_the_same_embedding():
    name = "mci0"
    ref = reference(name)
    folded = reparameterize(ref["variables"], name)
    assert set(folded) == {"params"}  # every BatchNorm folded: no statistics left
    assert count(folded) < count(ref["variables"]["params"])
    got = jax.jit(build_mci(name, reparameterized=True).apply)(folded, images())
    for key in ("embedding", "pooled"):
        assert rel_err(got[key], ref["got"][key]) < 1e-5, key
    for stride in (4, 8, 16, 32):
        assert rel_err(got["features"][stride], ref["got"]["features"][stride]) < 1e-5, stride
    # ... and timm's own reparameterised model agrees.
    fused = timm.utils.model.reparameterize_model(ref["model"])
    with torch.no_grad():
        want = fused(torch.tensor(images()).permute(0, 3, 1, 2)).numpy()
    assert rel_err(got["embedding"], want) < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_every_timm_tensor_converts_and_counts_agree(name):
    """Conversion checks every key and shape against the module; then parameter and statistics counts."""
    model = timm_model(name)
    variables = fastvit_to_mci({key: value.numpy() for key, value in model.state_dict().items()}, name)
    assert count(variables["params"]) == sum(p.numel() for p in model.parameters())
    statistics = sum(b.numel() for key, b in model.named_buffers() if key.endswith(("running_mean", "running_var")))
    assert count(variables["batch_stats"]) == statistics
    assert count(variables["params"]) / 1e6 == pytest.approx(REPORTED_MILLIONS[name], rel=0.01)


def test_conversion_names_every_misfit_in_one_line():
    state_dict = dict(reference("mci0")["state_dict"])
    state_dict["stages.0.blocks.0.extra.weight"] = np.zeros(3, np.float32)
    del state_dict["stages.3.blocks.1.token_mixer.qkv.weight"]
    state_dict["head.fc.weight"] = np.zeros((512, 1023), np.float32)
    with pytest.raises(ConversionError) as raised:
        fastvit_to_mci(state_dict, "mci0")
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert "\n" not in message
    assert "unknown keys: stages.0.blocks.0.extra.weight" in message
    assert "missing keys: stages.3.blocks.1.token_mixer.qkv.weight" in message
    assert "head.fc.weight (512, 1023) vs expected (512, 1024)" in message


def test_conversion_error_for_the_wrong_variant_is_short():
    """mci0 weights for mci1: hundreds of missing keys and mismatches, summarised in a short line."""
    with pytest.raises(ConversionError, match="more") as raised:
        fastvit_to_mci(reference("mci0")["state_dict"], "mci1")
    assert len(str(raised.value)) < 1500 and "\n" not in str(raised.value)


def test_custom_size_model_converts_runs_in_bfloat16_and_has_gradients():
    """A 1-block-per-stage MCi converted from the same timm model matches it; runs in bfloat16 close to float32;
    has finite gradients for every parameter (BatchNorm statistics are inputs: apply needs no mutable)."""
    widths = (16, 32, 64, 128)
    model = timm.create_model("fastvit_mci0", layers=(1, 1, 1, 1), embed_dims=widths, num_classes=16).eval()
    randomise(model, seed=1)
    module = MCi(depths=(1, 1, 1, 1), widths=widths, num_classes=16)
    variables = fastvit_to_mci({key: value.numpy() for key, value in model.state_dict().items()}, module)
    x = images()[:, :, :64]
    with torch.no_grad():
        want = model(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    full = jax.jit(module.apply)(variables, x)
    assert rel_err(full["embedding"], want) < 1e-4
    half = jax.jit(module.clone(dtype=jnp.bfloat16).apply)(variables, x)
    assert half["embedding"].dtype == jnp.bfloat16 and half["features"][32].shape == (2, 2, 2, 128)
    assert rel_err(half["embedding"], want) < 5e-2

    def loss(params):
        return jnp.sum(module.apply({**variables, "params": params}, x)["embedding"] ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert all(bool(np.all(np.isfinite(g))) for g in jax.tree.leaves(grads))


def test_init_gives_the_converted_structure():
    """Training from scratch (`init`) and converted checkpoints have the same variables."""
    converted = reference("mci0")["variables"]
    initial = jax.eval_shape(
        build_mci("mci0").init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    )
    assert jax.tree.map(np.shape, initial) == jax.tree.map(np.shape, converted)


def test_image_sides_must_be_multiples_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(build_mci("mci0").init, jax.random.key(0), jnp.zeros((1, 64, 80, 3)))
    with pytest.raises(ValueError, match="unknown MCi preset"):
        build_mci("mci9")
