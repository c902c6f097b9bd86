"""open_clip CLIP checkpoints (OpenAI, LAION, DataComp weights; MobileCLIP) to clipjax variables.

open_clip's ViT models keep OpenAI's layout: `visual.conv1`, `visual.class_embedding`,
`visual.transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}`, `visual.proj`;
the text tower at the top level (`token_embedding`, `transformer.resblocks.N...`, `ln_final`,
`text_projection`), or under `text.` for models with a custom text tower. MobileCLIP-S1/S2 and MobileCLIP2-S0
hold a timm `fastvit_mci` image tower under `visual.trunk.` (see `clipjax.convert.fastvit`), MobileCLIP-B a
timm ViT-B/16 with a conv stem (`vit_base_mci_224`: `patch_embed.backbone.{0,1,2}`, `blocks.N.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`). PyTorch linear weights are
[out, in]; Flax kernels are [in, out], and clipjax splits attention projections by head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from clipjax.convert.fastvit import fastvit_to_mci
from clipjax.convert.state_dict import StateDictReader
from clipjax.defaults import base_config
from clipjax.models.presets import image_tower_dims, is_mci, text_tower_dims

# open_clip name -> clipjax config.model overrides. Vision heads are width / 64 in open_clip, as in clipjax's
# presets. "-quickgelu" names are the OpenAI-trained weights' activation.
OPEN_CLIP_MODELS: dict[str, dict[str, Any]] = {
    "ViT-B-32": {"name": "vit_b32", "embed_dim": 512, "text": {"name": "base"}},
    "ViT-B-16": {"name": "vit_b16", "embed_dim": 512, "text": {"name": "base"}},
    "ViT-L-14": {"name": "vit_l14", "embed_dim": 768, "text": {"name": "large"}},
}
for _name in list(OPEN_CLIP_MODELS):
    OPEN_CLIP_MODELS[f"{_name}-quickgelu"] = {**OPEN_CLIP_MODELS[_name], "act": "quick_gelu"}
# MobileCLIP: timm fastvit_mci image towers (whose classifier is the 512-d projection) at 256 px, and a base
# text tower without the causal mask.
_MOBILECLIP_TEXT = {"name": "base", "causal": False}
OPEN_CLIP_MODELS.update(
    {
        "MobileCLIP-S1": {"name": "mci1", "image_size": 256, "embed_dim": 512, "text": _MOBILECLIP_TEXT},
        "MobileCLIP-S2": {"name": "mci2", "image_size": 256, "embed_dim": 512, "text": _MOBILECLIP_TEXT},
        "MobileCLIP2-S0": {"name": "mci0", "image_size": 256, "embed_dim": 512, "text": _MOBILECLIP_TEXT},
        # MobileCLIP-B: timm's ViT-B/16 with a conv stem (vit_base_mci_224) and a causal base text tower.
        "MobileCLIP-B": {
            "name": "vit_b16",
            "embed_dim": 512,
            "image": {"stem": "mci", "layout": "timm"},
            "text": {"name": "base", "causal": True},
            "normalize": "none",
        },
    }
)


def open_clip_normalize(name: str) -> str:
    """The image normalisation open_clip model `name` was trained with: "none" ([0, 1]) for MobileCLIP."""
    entry = OPEN_CLIP_MODELS[name]
    return entry.get("normalize", "none" if is_mci(entry["name"]) else "clip")


def open_clip_model_config(name: str) -> ConfigDict:
    """The full clipjax `config.model` equal to open_clip model `name` (one of OPEN_CLIP_MODELS).

    Raises:
      KeyError: an unsupported name.
    """
    if name not in OPEN_CLIP_MODELS:
        raise KeyError(f"open_clip model {name!r} is not supported; choose one of {', '.join(OPEN_CLIP_MODELS)}")
    model = base_config().model
    overrides = dict(OPEN_CLIP_MODELS[name])
    overrides.pop("normalize", None)
    model.text.update(overrides.pop("text", {}))
    model.image.update(overrides.pop("image", {}))
    model.update(overrides)
    return model


def _linear(reader: StateDictReader, prefix: str, fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
    return {
        "kernel": reader.take(f"{prefix}.weight", (fan_out, fan_in)).T,
        "bias": reader.take(f"{prefix}.bias", (fan_out,)),
    }


def norm_params(reader: StateDictReader, prefix: str, width: int) -> dict[str, np.ndarray]:
    return {"scale": reader.take(f"{prefix}.weight", (width,)), "bias": reader.take(f"{prefix}.bias", (width,))}


# Parameter names of one transformer block: OpenAI's layout (open_clip's own towers) and timm's VisionTransformer.
OPENAI_BLOCK = {
    "blocks": "resblocks",
    "ln_1": "ln_1",
    "qkv": "attn.in_proj_",
    "out": "attn.out_proj",
    "ln_2": "ln_2",
    "fc1": "mlp.c_fc",
    "fc2": "mlp.c_proj",
}
TIMM_BLOCK = {
    "blocks": "blocks",
    "ln_1": "norm1",
    "qkv": "attn.qkv.",
    "out": "attn.proj",
    "ln_2": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}


def encoder_params(
    reader: StateDictReader,
    prefix: str,
    depth: int,
    width: int,
    heads: int,
    mlp_dim: int,
    names: Mapping[str, str] = OPENAI_BLOCK,
) -> dict:
    """`{prefix}.resblocks.N` (or timm's `{prefix}.blocks.N` with names=TIMM_BLOCK) -> clipjax Encoder params
    {block_N: ...}."""
    head_dim = width // heads
    blocks = {}
    for i in range(depth):
        p = ".".join(filter(None, (prefix, names["blocks"], str(i))))
        qkv_w = reader.take(f"{p}.{names['qkv']}weight", (3 * width, width))
        qkv_b = reader.take(f"{p}.{names['qkv']}bias", (3 * width,))
        out_w = reader.take(f"{p}.{names['out']}.weight", (width, width))
        blocks[f"block_{i}"] = {
            "ln_1": norm_params(reader, f"{p}.{names['ln_1']}", width),
            "attn": {
                # rows of the fused projection are [q; k; v], each head-major: output index = head * head_dim + d
                "qkv": {
                    "kernel": qkv_w.reshape(3, heads, head_dim, width).transpose(3, 0, 1, 2),
                    "bias": qkv_b.reshape(3, heads, head_dim),
                },
                "out": {
                    "kernel": out_w.T.reshape(heads, head_dim, width),
                    "bias": reader.take(f"{p}.{names['out']}.bias", (width,)),
                },
            },
            "ln_2": norm_params(reader, f"{p}.{names['ln_2']}", width),
            "mlp": {
                "fc1": _linear(reader, f"{p}.{names['fc1']}", width, mlp_dim),
                "fc2": _linear(reader, f"{p}.{names['fc2']}", mlp_dim, width),
            },
        }
    return blocks


def _vision_transformer(reader: StateDictReader, model: ConfigDict) -> dict:
    dims = image_tower_dims(model)
    width, patch = dims["width"], dims["patch_size"]
    grid = model.image_size // patch
    return {
        "patch_embed": {"kernel": reader.take("visual.conv1.weight", (width, 3, patch, patch)).transpose(2, 3, 1, 0)},
        "cls_token": reader.take("visual.class_embedding", (width,)),
        "pos_embed": reader.take("visual.positional_embedding", (1 + grid * grid, width)),
        "ln_pre": norm_params(reader, "visual.ln_pre", width),
        "encoder": encoder_params(reader, "visual.transformer", dims["depth"], width, dims["heads"], dims["mlp_dim"]),
        "ln_post": norm_params(reader, "visual.ln_post", width),
        "proj": {"kernel": reader.take("visual.proj", (width, model.embed_dim))},
    }


def _timm_vision_transformer(reader: StateDictReader, model: ConfigDict) -> tuple[dict, dict]:
    """MobileCLIP-B's image tower (timm vit_base_mci_224 under `visual.trunk.`) -> (params, batch_stats)."""
    dims = image_tower_dims(model)
    width, grid, t = dims["width"], model.image_size // dims["patch_size"], "visual.trunk."
    stem = f"{t}patch_embed.backbone"
    params, stats = {}, {}
    for i, (channels_in, size) in enumerate(((3, 4), (width // 4, 2))):
        kernel = reader.take(f"{stem}.{i}.conv.weight", (width // 4, channels_in, size, size))
        params[f"stem_conv_{i}"] = {"kernel": kernel.transpose(2, 3, 1, 0)}
        params[f"stem_norm_{i}"] = norm_params(reader, f"{stem}.{i}.bn", width // 4)
        stats[f"stem_norm_{i}"] = {
            "mean": reader.take(f"{stem}.{i}.bn.running_mean", (width // 4,)),
            "var": reader.take(f"{stem}.{i}.bn.running_var", (width // 4,)),
        }
    params["patch_embed"] = {
        "kernel": reader.take(f"{stem}.2.conv.weight", (width, width // 4, 2, 2)).transpose(2, 3, 1, 0),
        "bias": reader.take(f"{stem}.2.conv.bias", (width,)),
    }
    params["cls_token"] = reader.take(f"{t}cls_token", (1, 1, width)).reshape(width)
    params["pos_embed"] = reader.take(f"{t}pos_embed", (1, grid * grid, width)).reshape(grid * grid, width)
    params["encoder"] = encoder_params(
        reader, "visual.trunk", dims["depth"], width, dims["heads"], dims["mlp_dim"], TIMM_BLOCK
    )
    params["ln_post"] = norm_params(reader, f"{t}norm", width)
    params["proj"] = _linear(reader, f"{t}head", width, model.embed_dim)
    return params, stats


def text_transformer(reader: StateDictReader, model: ConfigDict, prefix: str = "") -> dict:
    """open_clip's text tower (keys at the top level, or under `prefix`, e.g. "text.") -> clipjax params."""
    dims = text_tower_dims(model)
    width, length = dims["width"], model.text.context_length
    return {
        "token_embed": {"embedding": reader.take(f"{prefix}token_embedding.weight", (model.text.vocab_size, width))},
        "pos_embed": reader.take(f"{prefix}positional_embedding", (length, width)),
        "encoder": encoder_params(reader, f"{prefix}transformer", dims["depth"], width, dims["heads"], dims["mlp_dim"]),
        "ln_final": norm_params(reader, f"{prefix}ln_final", width),
        "proj": {"kernel": reader.take(f"{prefix}text_projection", (width, model.embed_dim))},
    }


def convert_open_clip(state_dict: Mapping[str, np.ndarray], model: ConfigDict) -> dict[str, Any]:
    """An open_clip CLIP state dict (ViT or MobileCLIP) -> clipjax CLIP variables for `config.model` = `model`.

    Args:
      state_dict: {name: numpy array} (see `clipjax.convert.state_dict.read_state_dict`).
      model: the matching clipjax `config.model` (e.g. `open_clip_model_config("ViT-B-16")`).

    Returns:
      float32 numpy variables for `build_clip(model)`: {"params": {"image", "text", "logit_scale"}}, plus
      {"batch_stats": {"image": ...}} for MCi image towers (their frozen BatchNorm statistics).

    Raises:
      ConversionError: naming every unknown key, missing key and shape mismatch.
    """
    what = f"clipjax model {model.name} (image {model.image_size} px, embed {model.embed_dim})"
    if is_mci(model.name):
        trunk = "visual.trunk."
        image = fastvit_to_mci(
            {k.removeprefix(trunk): v for k, v in state_dict.items() if k.startswith(trunk)},
            model.name,
            num_classes=model.embed_dim,
        )
        rest = {k: v for k, v in state_dict.items() if not k.startswith(trunk)}
        reader = StateDictReader(rest)
        params = {"image": image["params"], "text": text_transformer(reader, model, prefix="text.")}
        params["logit_scale"] = reader.take("logit_scale", ())
        reader.finish(what)
        return {"params": params, "batch_stats": {"image": image["batch_stats"]}}
    if model.image.layout == "timm":  # MobileCLIP-B: a timm ViT and a custom text tower under "text."
        reader = StateDictReader(state_dict, ignore=("num_batches_tracked",))
        image, stats = _timm_vision_transformer(reader, model)
        params = {"image": image, "text": text_transformer(reader, model, prefix="text.")}
        params["logit_scale"] = reader.take("logit_scale", ())
        reader.finish(what)
        return {"params": params, "batch_stats": {"image": stats}}
    reader = StateDictReader(state_dict)
    params = {
        "image": _vision_transformer(reader, model),
        "text": text_transformer(reader, model),
        "logit_scale": reader.take("logit_scale", ()),
    }
    reader.finish(what)
    return {"params": params}
