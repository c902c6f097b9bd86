"""Model FLOPs of CLIP by formula, the numerator of model FLOPs utilisation (MFU).

Counts the matrix products only (2 FLOPs per multiply-add), as MFU conventionally does: every dense layer,
attention's two token-by-token products over the full N x N (causal masks included, as the usual
convention counts them), the patch embedding and the projections. Norms, activations, softmax and the
loss are left out: they are memory-bound and well under 1% of a ViT-B step. A training step counts 3x the
forward (the backward computes two products per forward product); rematerialised work is not counted.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from clipjax.models.presets import image_tower_dims, is_mci, text_tower_dims


def transformer_forward_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
    """Forward FLOPs of `depth` pre-norm blocks over one sequence of `tokens` tokens.

    Per token and block: the fused qkv (2 * 3 * width^2) and output (2 * width^2) projections, the MLP
    (2 * 2 * width * mlp_dim), and attention's q.k and weights.v products (2 * 2 * tokens * width).
    """
    per_token = 8 * width * width + 4 * width * mlp_dim + 4 * tokens * width
    return float(depth * tokens * per_token)


def clip_forward_flops(model: ConfigDict) -> dict[str, float]:
    """Forward FLOPs of one image and one caption through the towers of `config.model` (ViT image towers).

    Returns:
      {"image": FLOPs of one image, "text": FLOPs of one caption of context_length tokens}.

    Raises:
      ValueError: the image tower is an MCi encoder (convolutional; count its FLOPs with XLA's cost
        analysis instead, as benchmarks/train_step.py reports).
    """
    if is_mci(model.name):
        raise ValueError(f"no FLOP formula for the convolutional image tower {model.name!r}")
    if model.image.stem == "conv":
        raise ValueError("no FLOP formula for the convolutional stem (config.model.image.stem='conv')")
    image = image_tower_dims(model)
    patch, width = image["patch_size"], image["width"]
    patches = (model.image_size // patch) ** 2
    image_flops = transformer_forward_flops(1 + patches, width, image["depth"], image["mlp_dim"])
    if model.image.stem == "mci":
        # MobileCLIP-B's stem: 4x4/4 conv 3 -> width/4, 2x2/2 conv width/4 -> width/4, 2x2/2 patch embedding.
        stem = width // 4
        image_flops += 2 * 16 * patches * 16 * 3 * stem + 2 * 4 * patches * 4 * stem * stem
        image_flops += 2 * patches * 4 * stem * width
    else:
        image_flops += 2 * patches * patch * patch * 3 * width  # patch embedding
    image_flops += 2 * width * model.embed_dim  # projection of the pooled token

    text = text_tower_dims(model)
    length = model.text.context_length
    text_flops = transformer_forward_flops(length, text["width"], text["depth"], text["mlp_dim"])
    text_flops += 2 * text["width"] * model.embed_dim
    return {"image": image_flops, "text": text_flops}


def clip_train_flops_per_image(model: ConfigDict, captions_per_image: int = 1) -> float:
    """Training FLOPs (forward + backward = 3x forward) for one image and its `captions_per_image` captions."""
    flops = clip_forward_flops(model)
    return 3.0 * (flops["image"] + captions_per_image * flops["text"])
