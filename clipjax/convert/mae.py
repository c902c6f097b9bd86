"""Released MAE encoders (facebookresearch/mae's `mae_pretrain_vit_base.pth`, timm's `vit_*_patch16_224.mae`)
-> clipjax's `VisionTransformer` in MAE's layout, for finetuning the paper's baseline without pretraining it.

Both are timm ViTs: `cls_token` [1, 1, w], `pos_embed` [1, 1 + g * g, w] (the fixed sine-cosine table),
`patch_embed.proj` (a strided conv with bias), `blocks.N` (norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2)
and the final `norm`. A checkpoint that also holds MAE's decoder (`decoder_*`, `mask_token`) converts its
encoder; the decoder's keys are left out. The image size follows from the position embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from ml_collections import ConfigDict

from clipjax.convert.openclip import TIMM_BLOCK, encoder_params, norm_params
from clipjax.convert.state_dict import ConversionError, StateDictReader
from clipjax.defaults import base_config
from clipjax.models.presets import image_tower_dims, image_tower_names, is_mci

DECODER_KEYS = ("decoder_", "mask_token")  # MAE's pretraining decoder: not part of the encoder
MAE_NORMALIZE = "imagenet"  # MAE trains on ImageNet-normalised pixels


def mae_model_config(name: str, state_dict: Mapping[str, np.ndarray]) -> ConfigDict:
    """The clipjax `config.model` of an MAE encoder: the ViT preset `name` (e.g. "vit_b16", MAE's ViT-B/16) in
    MAE's layout, at the image size its position embedding covers.

    Raises:
      ConversionError: `name` is no ViT preset, or the checkpoint has no position embedding to size it by.
    """
    if name not in image_tower_names() or is_mci(name):
        vits = ", ".join(n for n in image_tower_names() if not is_mci(n))
        raise ConversionError(f"--model={name!r} is not a ViT preset; choose one of {vits}")
    model = base_config().model
    model.name = name
    model.image.layout = "mae"
    if "pos_embed" not in state_dict:
        raise ConversionError("checkpoint does not fit an MAE encoder: missing keys: pos_embed")
    grid = math.isqrt(int(np.prod(state_dict["pos_embed"].shape[:-1])) - 1)
    model.image_size = grid * image_tower_dims(model)["patch_size"]
    return model


def convert_mae(state_dict: Mapping[str, np.ndarray], model: ConfigDict) -> dict:
    """An MAE encoder's state dict -> {"params": {"image": ...}} for `build_image_tower(model)` (the
    projection, which MAE has not, is left for finetuning to initialise).

    Raises:
      ConversionError: naming every unknown key, missing key and shape mismatch.
    """
    encoder = {k: v for k, v in state_dict.items() if not k.startswith(DECODER_KEYS)}
    reader = StateDictReader(encoder)
    dims = image_tower_dims(model)
    width, patch = dims["width"], dims["patch_size"]
    grid = model.image_size // patch
    image = {
        "patch_embed": {
            "kernel": reader.take("patch_embed.proj.weight", (width, 3, patch, patch)).transpose(2, 3, 1, 0),
            "bias": reader.take("patch_embed.proj.bias", (width,)),
        },
        "cls_token": reader.take("cls_token", (1, 1, width)).reshape(width),
        "pos_embed": reader.take("pos_embed", (1, 1 + grid * grid, width)).reshape(1 + grid * grid, width),
        "encoder": encoder_params(reader, "", dims["depth"], width, dims["heads"], dims["mlp_dim"], TIMM_BLOCK),
        "ln_post": norm_params(reader, "norm", width),
    }
    reader.finish(f"an MAE {model.name} encoder ({model.image_size} px)")
    return {"params": {"image": image}}
