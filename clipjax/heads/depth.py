"""Monocular depth estimation on a pretrained image tower: the MIM-depth head (Xie et al. 2023, "Revealing the
Dark Secrets of Masked Image Modeling"; GLPDepth's last layer and sigmoid range).

Head, on a feature map of stride s (channels C = `channels`, all in float32):
  num_deconv x  4x4 stride-2 transposed conv (C, no bias) [+ MCi skip], BatchNorm, ReLU     stride s -> s / 2
  3x3 conv (C, no bias: the BatchNorm shifts), BatchNorm, ReLU
  log2(s) - num_deconv x  bilinear x2 upsampling (half-pixel centres, PyTorch align_corners=False)   -> stride 1
  3x3 conv (C), ReLU, 3x3 conv (1)                                                           GLPDepth's last layer
  sigmoid * max_depth                                                                        metres in (0, max_depth)
A ViT contributes its last block's patch tokens after ln_post, folded back onto the patch grid (stride = patch
size: ViT-B/16 gets 3 deconvolutions and 1 upsampling). An MCi contributes its stride-32 map (3 deconvolutions
and 2 upsamplings, the paper's setting for stride-32 features) plus U-Net / FPN-style skips: after the deconv
that reaches stride 16, 8 or 4, a 1x1 conv projection (`skip_i`) of MCi's feature at that stride is added
before the BatchNorm. Convolutions start as the paper's: normal(std 0.001) kernels, zero biases.

BatchNorm. `train=True` normalises the head with batch statistics and must run with `mutable=["batch_stats"]`
(the running averages it updates, momentum 0.1 as PyTorch); `train=False` uses the running averages. An MCi
tower follows its own rule (clipjax.models.mci): batch statistics exactly when "batch_stats" is mutable. So
`train` and the mutability must agree, and do: `apply(v, x, train=True, mutable=["batch_stats"])` trains
tower and head BatchNorms together (as MobileCLIP and GLPDepth train), `apply(v, x)` evaluates both with
running averages; any other pairing raises ValueError rather than silently mixing modes. (A frozen-statistics
MCi under a training head is therefore not expressible here.) ViT towers have no BatchNorm; their stochastic
depth acts only when the apply gets a "dropout" rng.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from clipjax.heads.towers import check_batch_norm_mode, vit_feature_map
from clipjax.models.mci import MCi
from clipjax.models.presets import build_image_tower

BN_EPS = 1e-5  # PyTorch's BatchNorm2d default (GLPDepth / MIM-depth are PyTorch)
BN_MOMENTUM = 0.9  # Flax's weight of the old running average: PyTorch's momentum 0.1
_INIT = nn.initializers.normal(stddev=0.001)  # MIM-depth's decoder init (normal_init std=0.001, bias 0)


def num_upsamplings(stride: int, num_deconv: int) -> int:
    """How many bilinear x2 upsamplings follow `num_deconv` deconvolutions on a stride-`stride` feature map to
    reach full resolution: log2(stride) - num_deconv. Raises ValueError unless `stride` is a power of two
    >= 2**num_deconv (num_deconv >= 0)."""
    if num_deconv < 0:
        raise ValueError(f"num_deconv must be >= 0, got {num_deconv}")
    if stride < 1 or stride & (stride - 1) or stride < 2**num_deconv:
        raise ValueError(
            f"the depth head needs a feature stride that is a power of 2 >= 2**num_deconv = {2**num_deconv}, "
            f"got {stride}"
        )
    return stride.bit_length() - 1 - num_deconv


def transposed_conv(features: int, name: str | None = None) -> nn.ConvTranspose:
    """4x4 stride-2 transposed convolution without bias that exactly doubles H and W: [B, H, W, C] float32 ->
    [B, 2H, 2W, features] float32. Padding (2, 2) on the dilated input is PyTorch's ConvTranspose2d(kernel 4,
    stride 2, padding 1); Flax applies the kernel unflipped, so a PyTorch weight [in, out, 4, 4] corresponds to
    kernel = weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)."""
    return nn.ConvTranspose(
        features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False, kernel_init=_INIT, name=name
    )


def _conv3x3(features: int, use_bias: bool, name: str) -> nn.Conv:
    """3x3 'SAME' conv (PyTorch padding 1): [B, H, W, C] float32 -> [B, H, W, features] float32."""
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=use_bias, kernel_init=_INIT, name=name)


class BilinearUpsample(nn.Module):
    """Bilinear x2 upsampling with half-pixel centres (PyTorch's align_corners=False; jax.image.resize only
    antialiases when shrinking). [B, H, W, C] -> [B, 2H, 2W, C], same dtype. A module (without parameters) so
    that the upsamplings show by name ("upsample_i") in `capture_intermediates`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")


class DepthEstimator(nn.Module):
    """Image tower + MIM-depth head (see the module docstring for the layout and the BatchNorm rule).

    `__call__(images [B, H, W, 3] float, normalised as the tower expects; train: bool) -> depth [B, H, W]
    float32 in metres, in (0, max_depth)`. H and W must be multiples of the tower's stride (ViT: patch size;
    MCi: 32). The head computes in float32 whatever the tower's dtype. The tower keeps the name "image", so a
    CLIP checkpoint's image tower sits at params["image"]; the head's parameters are deconv_i, deconv_norm_i,
    skip_i (MCi only), conv, conv_norm, last_conv_0 and last_conv_1.
    """

    image: nn.Module
    max_depth: float = 10.0
    channels: int = 32
    num_deconv: int = 3

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        check_batch_norm_mode(self, self.image, train)
        features, skips = self._features(images)
        h, w = images.shape[1:3]
        stride = h // features.shape[1]
        if (features.shape[1] * stride, features.shape[2] * stride) != (h, w):
            raise ValueError(f"image size {(h, w)} is not a multiple of the feature grid {features.shape[1:3]}")
        upsamplings = num_upsamplings(stride, self.num_deconv)

        def norm(name: str) -> nn.BatchNorm:
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)

        x = features
        for i in range(self.num_deconv):
            x = transposed_conv(self.channels, name=f"deconv_{i}")(x)
            skip = skips.get(stride // 2 ** (i + 1))
            if skip is not None:
                # A 1x1 projection of the tower's map at this stride: fine detail the stride-32 map has lost.
                x = x + nn.Conv(self.channels, (1, 1), use_bias=False, kernel_init=_INIT, name=f"skip_{i}")(skip)
            x = nn.relu(norm(f"deconv_norm_{i}")(x))
        x = nn.relu(norm("conv_norm")(_conv3x3(self.channels, use_bias=False, name="conv")(x)))
        for i in range(upsamplings):
            x = BilinearUpsample(name=f"upsample_{i}")(x)
        x = nn.relu(_conv3x3(self.channels, use_bias=True, name="last_conv_0")(x))
        x = _conv3x3(1, use_bias=True, name="last_conv_1")(x)
        return nn.sigmoid(x[..., 0]) * self.max_depth

    def _features(self, images: jax.Array) -> tuple[jax.Array, dict[int, jax.Array]]:
        """(the map the head starts from [B, H/s, W/s, C] float32, {stride: skip map [B, H/stride, W/stride, C_i]
        float32} for MCi's strides 4, 8, 16; empty for a ViT)."""
        if isinstance(self.image, MCi):
            maps = {s: f.astype(jnp.float32) for s, f in self.image(images)["features"].items()}
            return maps.pop(32), maps
        return vit_feature_map(self.image(images), images)[0], {}


def build_depth_estimator(
    model: ConfigDict, max_depth: float, channels: int = 32, num_deconv: int = 3
) -> DepthEstimator:
    """The depth estimator on the image tower `config.model` describes (its embedding projection goes unused),
    predicting depths in (0, `max_depth`) metres (NYU Depth v2: 10, KITTI: 80)."""
    return DepthEstimator(build_image_tower(model), max_depth=max_depth, channels=channels, num_deconv=num_deconv)
