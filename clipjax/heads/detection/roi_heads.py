"""The RoI heads' networks: the box head (convs then fully connected layers: ViTDet's 4conv1fc with channel
LayerNorm, or the classic 2fc), its predictor (K + 1 class logits and class-specific or class-agnostic box
deltas), and the mask head (4 convs, a 2x deconv, a 1x1 conv to one mask per class).

Inputs are RoIAligned features [B, R, p, p, C]; every head treats the B x R RoIs as one batch.
"""

from __future__ import annotations

import flax.linen as nn
import jax

_MSRA = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # detectron2's c2_msra_fill (convs)
_XAVIER = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # detectron2's c2_xavier_fill (FCs)
LN_EPS = 1e-6  # detectron2's channel LayerNorm


def _conv_norm_relu(x: jax.Array, channels: int, norm: bool, name: str) -> jax.Array:
    """3x3 conv (no bias when normalised), channel LayerNorm when `norm`, ReLU. [N, h, w, C] -> [N, h, w,
    channels] float32."""
    x = nn.Conv(channels, (3, 3), use_bias=not norm, kernel_init=_MSRA, name=name)(x)
    if norm:
        x = nn.LayerNorm(epsilon=LN_EPS, name=f"{name}_norm")(x)
    return nn.relu(x)


class BoxHead(nn.Module):
    """detectron2's FastRCNNConvFCHead: `conv_dims` 3x3 convs (+ channel LayerNorm with `norm`) then `fc_dims`
    fully connected layers, ReLU after each. `__call__([B, R, p, p, C] float32) -> [B, R, fc_dims[-1]]`."""

    conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    fc_dims: tuple[int, ...] = (1024,)
    norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, rois = x.shape[:2]
        x = x.reshape(batch * rois, *x.shape[2:])
        for i, channels in enumerate(self.conv_dims):
            x = _conv_norm_relu(x, channels, self.norm, f"conv_{i}")
        x = x.reshape(batch * rois, -1)
        for i, width in enumerate(self.fc_dims):
            x = nn.relu(nn.Dense(width, kernel_init=_XAVIER, name=f"fc_{i}")(x))
        return x.reshape(batch, rois, -1)


class BoxPredictor(nn.Module):
    """detectron2's FastRCNNOutputLayers: `cls_score` to K + 1 logits (index K background) and `bbox_pred` to
    deltas per class (or one set when class_agnostic).
    `__call__([B, R, D]) -> (logits [B, R, K + 1], deltas [B, R, K or 1, 4])` float32."""

    num_classes: int
    class_agnostic: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01), name="cls_score")(x)
        sets = 1 if self.class_agnostic else self.num_classes
        deltas = nn.Dense(4 * sets, kernel_init=nn.initializers.normal(0.001), name="bbox_pred")(x)
        return logits, deltas.reshape(*x.shape[:-1], sets, 4)


class MaskHead(nn.Module):
    """detectron2's MaskRCNNConvUpsampleHead: `num_convs` 3x3 convs (+ channel LayerNorm with `norm`) with
    ReLU, a 2x2 stride-2 deconv with ReLU, a 1x1 conv to one mask logit per class.
    `__call__([B, R, p, p, C] float32) -> logits [B, R, 2p, 2p, num_classes] float32`."""

    num_classes: int
    num_convs: int = 4
    channels: int = 256
    norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, rois = x.shape[:2]
        x = x.reshape(batch * rois, *x.shape[2:])
        for i in range(self.num_convs):
            x = _conv_norm_relu(x, self.channels, self.norm, f"conv_{i}")
        x = nn.relu(nn.ConvTranspose(self.channels, (2, 2), strides=(2, 2), kernel_init=_MSRA, name="deconv")(x))
        x = nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.001), name="predictor")(x)
        return x.reshape(batch, rois, *x.shape[1:])


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """x in the forward pass, scale * gradient in the backward (Cascade R-CNN divides each stage's box-head
    gradient by the number of stages)."""
    return x * scale + jax.lax.stop_gradient(x * (1.0 - scale))
