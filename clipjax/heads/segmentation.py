"""Semantic segmentation (ADE20K) on a pretrained image tower, with mmsegmentation's decoders.

Towers and decoders (the paper's settings first; every head computes in float32 whatever the tower's dtype):
  ViT   last block's patch tokens after ln_post, folded onto the patch grid [B, H/p, W/p, width]
        -> SimpleFeaturePyramid (ViTDet, Li et al. 2022) to strides 4, 8, 16, 32 -> "upernet" (or "semantic_fpn")
  MCi   its own stage outputs at strides 4, 8, 16, 32 -> "semantic_fpn" (MobileCLIP2's; or "upernet")
Decoders:
  UperNetHead      (Xiao et al. 2018, mmseg UPerHead) pyramid pooling on stride 32 + FPN fusion, 512 channels
  SemanticFPNHead  (Kirillov et al. 2019, mmseg FPN neck + FPNHead) 256-channel FPN, 128-channel semantic branch
  FCNHead          the auxiliary head (mmseg FCNHead, num_convs=1) on the stride-16 level: the pyramid's for a
                   ViT, the tower's raw features for an MCi
All logits come out at stride 4 (main) and 16 (auxiliary); the loss upsamples them to the labels' size.

mmseg conventions kept: ConvModule = conv without bias + BatchNorm (eps 1e-5, PyTorch momentum 0.1) + ReLU,
kernels kaiming-normal (fan_out, ReLU gain); the classifier `conv_seg` (1x1 conv with bias, normal std 0.01)
follows a channel-wise dropout (Dropout2d, rate 0.1); bilinear resizes use half-pixel centres without
antialiasing (F.interpolate, align_corners=False), the FPN neck's top-down path nearest-neighbour ones.

BatchNorm: as clipjax.heads.depth. `train=True` normalises the heads with batch statistics and must run with
`mutable=["batch_stats"]`; `train=False` uses the running averages. Towers with BatchNorm (MCi, and a ViT
with the "mci" stem) use batch statistics exactly when "batch_stats" is mutable, so `train` and the
mutability must agree; other pairings raise ValueError. Dropout acts only when `train=True` and the apply
gets a "dropout" rng (which also turns on the tower's stochastic depth).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from clipjax.heads.towers import check_batch_norm_mode, vit_feature_map
from clipjax.models.layers import ACTIVATIONS
from clipjax.models.mci import MCi
from clipjax.models.presets import build_image_tower
from clipjax.ops.resize import resize_bilinear

BN_EPS = 1e-5  # PyTorch's BatchNorm2d default (mmseg trains with SyncBN)
BN_MOMENTUM = 0.9  # Flax's weight of the old running average: PyTorch's momentum 0.1
PYRAMID_LN_EPS = 1e-6  # detectron2's channel LayerNorm in ViTDet's simple feature pyramid
PYRAMID_STRIDES = (4, 8, 16, 32)
POOL_SCALES = (1, 2, 3, 6)  # UperNet's pyramid pooling bins
DECODERS = ("upernet", "semantic_fpn")
DECODER_CHANNELS = {"upernet": 512, "semantic_fpn": 128}  # mmseg's defaults for each decoder
_KAIMING = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # mmcv ConvModule's kaiming_init
_XAVIER = nn.initializers.xavier_uniform()  # mmseg FPN neck's init
_CLS_INIT = nn.initializers.normal(stddev=0.01)  # mmseg decode heads' conv_seg


def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
    """[bins, size] float32 averaging weights of PyTorch's AdaptiveAvgPool: bin i averages the indices
    floor(i * size / bins) .. ceil((i + 1) * size / bins) - 1 (bins overlap when size is not a multiple)."""
    weights = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start, end = (i * size) // bins, -(-(i + 1) * size // bins)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jax.Array, bins: int) -> jax.Array:
    """PyTorch's adaptive_avg_pool2d to bins x bins: [B, H, W, C] float -> [B, bins, bins, C], same dtype. Two
    small matmuls with static weights; HIGHEST precision so GPUs do not round the averages to TF32."""
    rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], bins), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], bins), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x, precision=jax.lax.Precision.HIGHEST)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """F.interpolate(mode="nearest", size=size): output index i reads input floor(i * in / out).
    [B, H, W, C] -> [B, *size, C]."""
    (h, w), (oh, ow) = x.shape[1:3], size
    rows = np.minimum(np.arange(oh) * h // oh, h - 1)
    cols = np.minimum(np.arange(ow) * w // ow, w - 1)
    return x[:, rows][:, :, cols]


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """The heads' BatchNorm: batch statistics when training (see the module docstring)."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


def _classify(x: jax.Array, num_classes: int, dropout: float, train: bool, parent: nn.Module) -> jax.Array:
    """mmseg's cls_seg inside `parent`'s compact method: Dropout2d (whole channels per sample) then the 1x1
    `conv_seg`. [B, H, W, C] float32 -> [B, H, W, num_classes] float32."""
    deterministic = not (train and parent.has_rng("dropout"))
    x = nn.Dropout(dropout, broadcast_dims=(1, 2), deterministic=deterministic, name="dropout")(x)
    return nn.Conv(num_classes, (1, 1), kernel_init=_CLS_INIT, name="conv_seg")(x)


class ConvNormReLU(nn.Module):
    """mmcv ConvModule with BN and ReLU: k x k conv (PyTorch padding k // 2, no bias: the BatchNorm shifts),
    BatchNorm, ReLU. `__call__(x [B, H, W, C] float32, train) -> [B, H, W, features] float32`."""

    features: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pad = self.kernel // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=_KAIMING,
            name="conv",
        )(x)
        return nn.relu(_batch_norm(train, "bn")(x))


class PyramidLevel(nn.Module):
    """One level of the simple feature pyramid. `scale` > 0: that many 2x2 stride-2 transposed convs, each
    halving the channels, with LayerNorm + GELU between them; `scale` < 0: that many 2x2 max-pools; 0: the
    identity. Then 1x1 conv + LayerNorm and 3x3 conv + LayerNorm (convs without bias).
    `__call__(x [B, h, w, D] float32) -> [B, h * 2**scale, w * 2**scale, channels] float32`."""

    scale: int
    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.scale):
            if i:
                x = ACTIVATIONS["gelu"](nn.LayerNorm(epsilon=PYRAMID_LN_EPS, name=f"norm_{i - 1}")(x))
            x = nn.ConvTranspose(max(1, x.shape[-1] // 2), (2, 2), strides=(2, 2), name=f"deconv_{i}")(x)
        for _ in range(-self.scale):
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = nn.Conv(self.channels, (1, 1), use_bias=False, name="lateral")(x)
        x = nn.LayerNorm(epsilon=PYRAMID_LN_EPS, name="lateral_norm")(x)
        x = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="output")(x)
        return nn.LayerNorm(epsilon=PYRAMID_LN_EPS, name="output_norm")(x)


def pyramid_scales(stride: int) -> dict[int, int]:
    """{pyramid stride: log2(stride / pyramid stride)}: how many x2 upsamplings (> 0) or max-pools (< 0) take a
    stride-`stride` map (a ViT's patch size) to strides 4, 8, 16 and 32. ValueError unless a power of 2."""
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"the simple feature pyramid needs a patch size that is a power of 2, got {stride}")
    log = stride.bit_length() - 1
    return {s: log - (s.bit_length() - 1) for s in PYRAMID_STRIDES}


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid on one ViT map (ViT-B/16: stride 4 = two deconvs, 8 = one, 16 = the map,
    32 = a max-pool; other powers of 2 shift the scales). Levels are submodules "stride_4" ... "stride_32".
    `__call__(x [B, H/p, W/p, width] float32, stride p) -> {4: [B, H/4, W/4, channels], 8: ..., 16: ..., 32:
    [B, H/32, W/32, channels]} float32`."""

    channels: int = 256

    @nn.compact
    def __call__(self, x: jax.Array, stride: int) -> dict[int, jax.Array]:
        return {
            s: PyramidLevel(scale, self.channels, name=f"stride_{s}")(x) for s, scale in pyramid_scales(stride).items()
        }


class UperNetHead(nn.Module):
    """UperNet (mmseg UPerHead): pyramid pooling (adaptive average pools to `pool_scales` bins, 1x1 ConvModule
    each, bilinear back, concatenated with the input, 3x3 ConvModule `ppm_bottleneck`) on the coarsest level;
    1x1 ConvModules `lateral_i` on the others; top-down sums of bilinearly upsampled coarser laterals; 3x3
    ConvModules `fpn_i` (not on the pooled level); all levels upsampled to the finest, concatenated, 3x3
    ConvModule `fpn_bottleneck`; dropout and `conv_seg`.
    `__call__({stride: [B, H/s, W/s, C_s] float32}, train) -> logits [B, H/s_min, W/s_min, num_classes] float32`.
    """

    num_classes: int
    channels: int = 512
    pool_scales: tuple[int, ...] = POOL_SCALES
    dropout: float = 0.1

    @nn.compact
    def __call__(self, features: dict[int, jax.Array], train: bool) -> jax.Array:
        strides = sorted(features)
        top = features[strides[-1]]
        pooled = [top]
        for i, bins in enumerate(self.pool_scales):
            y = ConvNormReLU(self.channels, 1, name=f"ppm_{i}")(adaptive_avg_pool(top, bins), train)
            pooled.append(resize_bilinear(y, top.shape[1:3]))
        laterals = [
            ConvNormReLU(self.channels, 1, name=f"lateral_{i}")(features[s], train) for i, s in enumerate(strides[:-1])
        ]
        laterals.append(ConvNormReLU(self.channels, 3, name="ppm_bottleneck")(jnp.concatenate(pooled, -1), train))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
        outs = [ConvNormReLU(self.channels, 3, name=f"fpn_{i}")(x, train) for i, x in enumerate(laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[1:3]
        x = jnp.concatenate([resize_bilinear(o, size) for o in outs], axis=-1)
        x = ConvNormReLU(self.channels, 3, name="fpn_bottleneck")(x, train)
        return _classify(x, self.num_classes, self.dropout, train, self)


class FPN(nn.Module):
    """mmseg's FPN neck: 1x1 lateral convs (`lateral_i`, with bias) to `channels`, top-down sums of
    nearest-upsampled coarser laterals, 3x3 output convs (`output_i`, with bias); no norms or activations.
    `__call__({stride: [B, H/s, W/s, C_s]}) -> {stride: [B, H/s, W/s, channels]}`, float32."""

    channels: int = 256

    @nn.compact
    def __call__(self, features: dict[int, jax.Array]) -> dict[int, jax.Array]:
        strides = sorted(features)
        laterals = [
            nn.Conv(self.channels, (1, 1), kernel_init=_XAVIER, name=f"lateral_{i}")(features[s])
            for i, s in enumerate(strides)
        ]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
        return {
            s: nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_XAVIER, name=f"output_{i}")(x)
            for i, (s, x) in enumerate(zip(strides, laterals))
        }


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch (mmseg FPN neck `neck` + FPNHead): on the neck's level at stride s,
    max(1, log2(s / s_min)) stages `scale_i_k` of 3x3 ConvModule (`channels`), each followed by bilinear x2
    upsampling unless s is the finest stride; the levels summed, dropout and `conv_seg`.
    `__call__({stride: [B, H/s, W/s, C_s] float32}, train) -> logits [B, H/s_min, W/s_min, num_classes] float32`.
    """

    num_classes: int
    channels: int = 128
    neck_channels: int = 256
    dropout: float = 0.1

    @nn.compact
    def __call__(self, features: dict[int, jax.Array], train: bool) -> jax.Array:
        levels = FPN(self.neck_channels, name="neck")(features)
        strides = sorted(levels)
        out = None
        for i, s in enumerate(strides):
            x = levels[s]
            for k in range(max(1, (s // strides[0]).bit_length() - 1)):
                x = ConvNormReLU(self.channels, 3, name=f"scale_{i}_{k}")(x, train)
                if s != strides[0]:
                    x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
            out = x if out is None else out + resize_bilinear(x, out.shape[1:3])
        return _classify(out, self.num_classes, self.dropout, train, self)


class FCNHead(nn.Module):
    """mmseg's FCNHead with num_convs=1 and no input concat (the auxiliary head): 3x3 ConvModule `conv`,
    dropout, `conv_seg`. `__call__(x [B, h, w, C] float32, train) -> logits [B, h, w, num_classes] float32`."""

    num_classes: int
    channels: int = 256
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ConvNormReLU(self.channels, 3, name="conv")(x, train)
        return _classify(x, self.num_classes, self.dropout, train, self)


class Segmenter(nn.Module):
    """Image tower + decoder (+ auxiliary FCN head); see the module docstring for the layouts and the BatchNorm
    and dropout rules.

    `__call__(images [B, H, W, 3] float, normalised as the tower expects; train) -> {"logits": [B, H/4, W/4,
    num_classes] float32, "aux": [B, H/16, W/16, num_classes] float32 (only with aux)}`. H and W must be
    multiples of 32 and of the tower's stride. Parameters: "image" (the tower, where a CLIP checkpoint's image
    tower sits), "pyramid" (ViT only), "decoder" and "aux_head". `channels` is the decoder's width (None:
    UperNet 512, Semantic FPN 128); `pyramid_channels` that of the simple feature pyramid and the FPN neck.
    UperNet reads an MCi's stage outputs directly (as mmseg's on a CNN); "semantic_fpn" always brings its FPN
    neck, so on a ViT it runs on the simple feature pyramid (adding the top-down path the pyramid lacks).
    """

    image: nn.Module
    num_classes: int
    decoder: str = "upernet"
    channels: int | None = None
    pyramid_channels: int = 256
    aux_channels: int = 256
    aux: bool = True
    dropout: float = 0.1

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r} is not one of {DECODERS}")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"segmentation needs image sides that are multiples of 32, got {images.shape[1:3]}")
        check_batch_norm_mode(self, self.image, train)
        if isinstance(self.image, MCi):
            features = {s: f.astype(jnp.float32) for s, f in self.image(images)["features"].items()}
            aux_input = features[16]
        else:
            grid, stride = vit_feature_map(self.image(images), images)
            features = SimpleFeaturePyramid(self.pyramid_channels, name="pyramid")(grid, stride)
            aux_input = features[16]
        channels = self.channels or DECODER_CHANNELS[self.decoder]
        if self.decoder == "upernet":
            decoder = UperNetHead(self.num_classes, channels, dropout=self.dropout, name="decoder")
        else:
            decoder = SemanticFPNHead(self.num_classes, channels, self.pyramid_channels, self.dropout, name="decoder")
        out = {"logits": decoder(features, train)}
        if self.aux:
            out["aux"] = FCNHead(self.num_classes, self.aux_channels, self.dropout, name="aux_head")(aux_input, train)
        return out


def build_segmenter(
    model: ConfigDict,
    num_classes: int,
    decoder: str,
    aux: bool = True,
    channels: int | None = None,
    pyramid_channels: int = 256,
    aux_channels: int = 256,
    dropout: float = 0.1,
) -> Segmenter:
    """The segmenter on the image tower `config.model` describes (its embedding projection goes unused), with
    `num_classes` classes (ADE20K: 150) and `decoder` "upernet" or "semantic_fpn"."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {DECODERS}")
    return Segmenter(
        build_image_tower(model),
        num_classes,
        decoder=decoder,
        channels=channels,
        pyramid_channels=pyramid_channels,
        aux_channels=aux_channels,
        aux=aux,
        dropout=dropout,
    )
