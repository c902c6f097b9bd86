"""MAE against Hugging Face's ViTMAEForPreTraining (PyTorch) as the oracle: the same weights and the same noise
give the same kept patches, mask, restore order, predictions and loss, with and without norm-pix; the fixed
sine-cosine table is transformers' own; masked pixels never reach the encoder, whatever the stem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from clipjax.losses.mae import mae_loss
from clipjax.models.mae import MaskedAutoencoder, random_masking
from clipjax.models.vit import VisionTransformer, sincos_position_embedding
from clipjax.ops.patches import patchify, unpatchify
from tests.shards import photos

SIZE, PATCH, WIDTH, HEADS = 32, 8, 32, 2
DECODER = dict(decoder_width=16, decoder_depth=2, decoder_heads=2, decoder_mlp_dim=32)


def hf_config(norm_pix: bool) -> ViTMAEConfig:
    return ViTMAEConfig(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64, image_size=SIZE,
        patch_size=PATCH, decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, mask_ratio=0.75, norm_pix_loss=norm_pix, layer_norm_eps=1e-6,
    )  # fmt: skip


def block(sd: dict, prefix: str, width: int, heads: int) -> dict:
    """A transformers ViTMAE layer's weights as a clipjax EncoderBlock's parameters."""
    head_dim = width // heads
    t = lambda name: sd[f"{prefix}.{name}"].detach().numpy()  # noqa: E731
    qkv = np.stack([t(f"attention.{n}_proj.weight").T.reshape(width, heads, head_dim) for n in "qkv"], axis=1)
    qkv_bias = np.stack([t(f"attention.{n}_proj.bias").reshape(heads, head_dim) for n in "qkv"])
    out = t("attention.o_proj.weight").T.reshape(heads, head_dim, width)
    return {
        "ln_1": {"scale": t("layernorm_before.weight"), "bias": t("layernorm_before.bias")},
        "ln_2": {"scale": t("layernorm_after.weight"), "bias": t("layernorm_after.bias")},
        "attn": {
            "qkv": {"kernel": qkv, "bias": qkv_bias},
            "out": {"kernel": out, "bias": t("attention.o_proj.bias")},
        },
        "mlp": {
            "fc1": {"kernel": t("mlp.fc1.weight").T, "bias": t("mlp.fc1.bias")},
            "fc2": {"kernel": t("mlp.fc2.weight").T, "bias": t("mlp.fc2.bias")},
        },
    }  # fmt: skip


def from_transformers(reference: ViTMAEForPreTraining, params: dict) -> dict:
    """`params` (clipjax's MaskedAutoencoder) with every array transformers' model has replaced by its."""
    sd = reference.state_dict()
    t = lambda name: sd[name].detach().numpy()  # noqa: E731
    image = dict(params["image"])
    image["cls_token"] = t("vit.embeddings.cls_token").reshape(WIDTH)
    image["pos_embed"] = t("vit.embeddings.position_embeddings")[0]
    kernel = t("vit.embeddings.patch_embeddings.projection.weight").transpose(2, 3, 1, 0)
    image["patch_embed"] = {"kernel": kernel, "bias": t("vit.embeddings.patch_embeddings.projection.bias")}
    image["encoder"] = {f"block_{i}": block(sd, f"vit.layers.{i}", WIDTH, HEADS) for i in range(2)}
    image["ln_post"] = {"scale": t("vit.layernorm.weight"), "bias": t("vit.layernorm.bias")}
    return {
        **params,
        "image": image,
        "mask_token": t("decoder.mask_token").reshape(16),
        "decoder_embed": {"kernel": t("decoder.decoder_embed.weight").T, "bias": t("decoder.decoder_embed.bias")},
        "decoder": {f"block_{i}": block(sd, f"decoder.decoder_layers.{i}", 16, 2) for i in range(2)},
        "decoder_norm": {"scale": t("decoder.decoder_norm.weight"), "bias": t("decoder.decoder_norm.bias")},
        "decoder_pred": {"kernel": t("decoder.decoder_pred.weight").T, "bias": t("decoder.decoder_pred.bias")},
    }


def tiny_mae(stem: str = "patch", layout: str = "mae") -> MaskedAutoencoder:
    tower = VisionTransformer(width=WIDTH, depth=2, num_heads=HEADS, mlp_dim=64, patch_size=PATCH, embed_dim=16,
                              layout=layout, stem=stem)  # fmt: skip
    return MaskedAutoencoder(tower, mask_ratio=0.75, **DECODER)


def real_images(count: int = 3) -> np.ndarray:
    """float32 [count, SIZE, SIZE, 3]: photos, resized and standardised as ImageNet normalisation would."""
    names = ("astronaut", "chelsea", "coffee", "rocket")[:count]
    pixels = np.stack([np.asarray(photos()[n].convert("RGB").resize((SIZE, SIZE))) for n in names]) / 255.0
    return ((pixels - 0.45) / 0.25).astype(np.float32)


def test_the_fixed_position_table_is_maes():
    # transformers rotates its canonical [h | w] table's halves to reproduce MAE's released layout.
    table = build_2d_sinusoidal_position_embedding(4, 4, embed_dim=WIDTH, cls_token=True).numpy()
    table = np.concatenate([table[:, WIDTH // 2 :], table[:, : WIDTH // 2]], axis=1)
    np.testing.assert_allclose(sincos_position_embedding(4, 4, WIDTH), table, atol=1e-6)
    model = tiny_mae()
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, 16)))["params"]
    np.testing.assert_array_equal(params["image"]["pos_embed"], sincos_position_embedding(4, 4, WIDTH))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_predictions_mask_and_loss_equal_transformers_vitmae(norm_pix):
    torch.manual_seed(0)
    reference = ViTMAEForPreTraining(hf_config(norm_pix)).eval()
    with torch.no_grad():  # non-trivial values where transformers initialises zeros: a real decoder table, biases
        reference.decoder.decoder_pos_embed.copy_(torch.tensor(sincos_position_embedding(4, 4, 16))[None])
        for name, value in reference.named_parameters():
            if name.endswith("bias") or "mask_token" in name or "cls_token" in name:
                value.normal_(0.0, 0.1)
    images = real_images()
    noise = np.random.default_rng(0).uniform(size=(3, 16)).astype(np.float32)
    with torch.no_grad():
        out = reference(torch.tensor(images).permute(0, 3, 1, 2), noise=torch.tensor(noise))
    model = tiny_mae()
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(images[:1]), jnp.asarray(noise[:1]))["params"]
    params = from_transformers(reference, params)
    got = jax.jit(model.apply)({"params": params}, jnp.asarray(images), jnp.asarray(noise))
    np.testing.assert_array_equal(got["mask"], out.mask.numpy())
    np.testing.assert_array_equal(got["restore"], out.ids_restore.numpy())
    np.testing.assert_allclose(got["pred"], out.logits.numpy(), atol=2e-5)
    loss = mae_loss(got["pred"], jnp.asarray(images), got["mask"], PATCH, norm_pix)
    assert float(loss) == pytest.approx(float(out.loss), rel=1e-5)


def test_masking_keeps_the_lowest_noise_patches_and_patchify_inverts():
    noise = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16)), jnp.float32)
    keep, mask, restore = random_masking(noise, 0.75)
    order = np.argsort(np.asarray(noise), axis=1)
    np.testing.assert_array_equal(keep, order[:, :4])
    expected = np.ones((2, 16), np.float32)
    np.put_along_axis(expected, order[:, :4], 0.0, axis=1)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(np.take_along_axis(order, np.asarray(restore), 1), np.tile(np.arange(16), (2, 1)))
    images = jnp.asarray(real_images(2))
    patches = patchify(images, PATCH)
    # Patch 5 is the second row's second patch; its first value is pixel (8, 8)'s red channel.
    assert patches.shape == (2, 16, PATCH * PATCH * 3) and patches[0, 5, 0] == images[0, 8, 8, 0]
    np.testing.assert_array_equal(unpatchify(patches, (4, 4), PATCH), images)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_masked_pixels_do_not_reach_the_encoder(stem):
    """The gradient of the encoder's output with respect to the pixels of removed patches is exactly 0: a conv
    stem crosses patch borders, so without blanking the removed patches it would see them."""
    model = tiny_mae(stem=stem, layout="clip")
    images = jnp.asarray(real_images(2))
    noise = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 16)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), images, noise)

    def encoded(x):
        return jnp.sum(model.apply(variables, x, noise)["latent"] ** 2)

    grad = np.asarray(jax.jit(jax.grad(encoded))(images))
    _, mask, _ = random_masking(noise, 0.75)
    per_patch = np.abs(patchify(jnp.asarray(grad), PATCH)).sum(-1)
    removed = np.asarray(mask) == 1
    assert np.all(per_patch[removed] == 0) and np.all(per_patch[~removed] > 0)


def test_a_timm_mae_encoder_converts_to_timms_features():
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    from clipjax.convert.mae import convert_mae
    from clipjax.defaults import base_config

    torch.manual_seed(0)
    reference = TimmViT(
        img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=2, num_heads=HEADS, mlp_ratio=2.0, num_classes=0
    ).eval()  # fmt: skip  (timm's vit_*_patch16_224.mae architecture, tiny)
    model = base_config().model
    model.update(name="vit_ti16", image_size=SIZE)
    model.image.update(width=WIDTH, depth=2, heads=HEADS, mlp_dim=64, patch_size=PATCH, layout="mae")
    state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    variables = convert_mae(state_dict, model)
    images = real_images()
    with torch.no_grad():
        want = reference.forward_features(torch.tensor(images).permute(0, 3, 1, 2)).numpy()
    from clipjax.models.presets import build_image_tower

    tower = build_image_tower(model)
    full = jax.jit(tower.init)(jax.random.PRNGKey(0), jnp.asarray(images[:1]))["params"]
    params = {**full, **variables["params"]["image"]}  # the projection, which MAE has not, stays as initialised
    got = jax.jit(tower.apply)({"params": params}, jnp.asarray(images))["tokens"]
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_released_mae_weights_convert_from_the_command_line(tmp_path, capsys):
    import timm

    from clipjax.convert.__main__ import main as convert_main
    from clipjax.weights import read_metadata, read_saved_variables

    # vit_base_patch16_224.mae's architecture at ViT-Ti's size (timm's ViT-Ti/16), which converts 15x faster.
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    state_dict = dict(reference.state_dict())
    # facebookresearch/mae's files wrap the weights in {"model": ...}; a visualisation one also has the decoder.
    state_dict["mask_token"] = torch.zeros(1, 1, 512)
    state_dict["decoder_embed.weight"] = torch.zeros(512, 192)
    torch.save({"model": state_dict}, tmp_path / "mae_pretrain_vit_base.pth")
    args = ["--source=mae", "--model=vit_ti16", f"--checkpoint={tmp_path / 'mae_pretrain_vit_base.pth'}"]
    assert convert_main([*args, f"--workdir={tmp_path / 'mae'}"]) == 0
    assert "converted mae vit_ti16 (5.5M parameters)" in capsys.readouterr().out
    metadata = read_metadata(str(tmp_path / "mae"))
    assert metadata["model"]["image"]["layout"] == "mae" and metadata["model"]["image_size"] == 224
    assert metadata["normalize"] == "imagenet" and metadata["towers"] == ["image"]
    image = read_saved_variables(str(tmp_path / "mae"))["params"]["image"]
    np.testing.assert_array_equal(image["pos_embed"], state_dict["pos_embed"][0].numpy())
    np.testing.assert_array_equal(
        image["encoder"]["block_11"]["mlp"]["fc2"]["bias"], state_dict["blocks.11.mlp.fc2.bias"]
    )
    del state_dict["norm.weight"]
    state_dict["head.weight"] = torch.zeros(1000, 192)
    torch.save({"model": state_dict}, tmp_path / "misfit.pth")
    args[-1] = f"--checkpoint={tmp_path / 'misfit.pth'}"
    assert convert_main([*args, f"--workdir={tmp_path / 'misfit'}"]) == 2
    err = capsys.readouterr().err
    assert "unknown keys: head.weight" in err and "missing keys: norm.weight" in err and "\n" not in err.strip()
