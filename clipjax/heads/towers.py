"""What the dense heads share about the image tower under them: its ViT tokens as a feature map and the
BatchNorm mode rule (PyTorch-equal bilinear resizing is clipjax/ops/resize.py)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipjax.models.mci import MCi


def vit_feature_map(out: dict[str, Any], images: jax.Array) -> tuple[jax.Array, int]:
    """(a ViT's last patch tokens after ln_post on their grid [B, H/p, W/p, width] float32, the stride p), from
    the tower's output dict for `images` [B, H, W, 3]."""
    gh, gw = out["grid"]
    stride = images.shape[1] // gh
    if (gh * stride, gw * stride) != images.shape[1:3]:
        raise ValueError(f"image size {images.shape[1:3]} is not a multiple of the patch grid {(gh, gw)}")
    tokens = out["tokens"].astype(jnp.float32)
    if tokens.shape[1] == gh * gw + 1:  # index 0 is CLS (towers with window attention drop it)
        tokens = tokens[:, 1:]
    return tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1]), stride


def has_batch_norm(tower: nn.Module) -> bool:
    """Whether the tower normalises with BatchNorm (MCi, or a ViT with MobileCLIP-B's "mci" stem)."""
    return isinstance(tower, MCi) or getattr(tower, "stem", None) == "mci"


def check_batch_norm_mode(head: nn.Module, tower: nn.Module, train: bool) -> None:
    """ValueError where `train` and the mutability of "batch_stats" disagree in `head`'s apply.

    A head's BatchNorms use batch statistics exactly when train=True, which must run with
    mutable=["batch_stats"]; a tower with BatchNorm uses batch statistics whenever the collection is mutable
    (clipjax.models.mci). So train=True with mutable statistics trains both, an apply without mutable
    evaluates both, and the other pairings would mix modes silently.
    """
    if head.is_initializing():
        return
    mutable = head.is_mutable_collection("batch_stats")
    if train and not mutable:
        raise ValueError('train=True updates BatchNorm statistics: apply with mutable=["batch_stats"]')
    if not train and mutable and has_batch_norm(tower):
        raise ValueError(
            'with "batch_stats" mutable the tower (MCi, or a ViT with the mci stem) normalises with batch '
            "statistics: pass train=True, or apply without mutable to evaluate"
        )
