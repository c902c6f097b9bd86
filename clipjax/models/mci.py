"""MobileCLIP's MCi0/1/2 image encoders (timm `fastvit_mci0/1/2`) in Flax Linen.

Layout (strides relative to the input):
  stem        three MobileOne blocks (3x3 s2, depthwise 3x3 s2, 1x1)                       stride 4
  stages 1-3  RepMixer blocks (depthwise 3x3 token mixing + ConvFFN)                        strides 4, 8, 16
  stage 4     7x7 conditional positional encoding (RepCPE), then attention blocks          stride 32
              (BatchNorm, multi-head attention with head dim 32, ConvFFN)
  ConvFFN     7x7 depthwise conv + BatchNorm, 1x1 expansion x3, GELU, 1x1
  downsample  before stages 2-4: 7x7 (+3x3) depthwise-per-input stride-2 conv, squeeze-excite in stages 3-4,
              GELU, then a 1x1 MobileOne block
  head        `final_conv` (MobileOne depthwise 3x3 to 2x channels, squeeze-excite, GELU), global average
              pool, linear `head/fc` to `num_classes` (MobileCLIP's 512-d CLIP projection)

Train-time form (`reparameterized=False`) has timm's multi-branch blocks (conv + BN branches, BN identity
branches, layer scales) so that converted MobileCLIP checkpoints can be finetuned as they were trained.
`reparameterize` folds every BatchNorm and branch into single convolutions for the `reparameterized=True`
module, whose variables are {"params": ...} only.

BatchNorm: the statistics are the non-trainable "batch_stats" collection ({"mean", "var"} per BatchNorm,
epsilon 1e-5). `module.apply({"params": p, "batch_stats": s}, images)` normalises with those running
statistics (eval mode): a converted encoder is exactly the function MobileCLIP shipped. Applying with
`mutable=["batch_stats"]` normalises with the statistics of the batch and returns updated running averages
(momentum 0.1, PyTorch's), as MobileCLIP trains; under a sharded `jax.jit` the batch statistics are those of
the global batch, so every device normalises alike (SyncBatchNorm without extra code).

Images are NHWC floats in [0, 1] (MobileCLIP normalises with mean 0 and std 1); H and W must be multiples
of 32. Matmuls and convolutions run in `dtype` with float32 parameters; softmax and pooling are float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.layers import ACTIVATIONS, DropPath, drop_path_rates

Dtype = Any

BN_EPS = 1e-5  # PyTorch's BatchNorm2d default, used by every timm fastvit BatchNorm
_GELU = ACTIVATIONS["gelu"]  # timm uses torch's exact (erf) GELU
_SE_DOWNSAMPLE = (False, False, True, True)  # squeeze-excite in the downsampling of stages 3 and 4
_ATTENTION = (False, False, False, True)  # stage 4 mixes tokens by attention, stages 1-3 by RepMixer

MCI_PRESETS: dict[str, dict[str, Any]] = {
    "mci0": {"depths": (2, 6, 10, 2), "widths": (64, 128, 256, 512)},
    "mci1": {"depths": (4, 12, 20, 4), "widths": (64, 128, 256, 512)},
    "mci2": {"depths": (4, 12, 24, 4), "widths": (80, 160, 320, 640)},
}


def _conv(features: int, kernel: int, stride: int, groups: int, use_bias: bool, dtype: Dtype, name: str) -> nn.Conv:
    """Conv with timm's symmetric padding ((stride - 1) + (kernel - 1)) // 2, so strided convs of different
    kernel sizes sample the same centres and their branches can be summed (and folded)."""
    pad = (stride - 1 + kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        name=name,
    )


def batch_norm(parent: nn.Module, dtype: Dtype, name: str) -> nn.BatchNorm:
    """BatchNorm in eval mode (running statistics) unless the "batch_stats" collection is mutable in this
    apply, which is how a training step asks for batch statistics (see the module docstring)."""
    training = parent.is_mutable_collection("batch_stats") and not parent.is_initializing()
    # PyTorch's momentum 0.1 is Flax's 0.9 (the weight of the old running average).
    return nn.BatchNorm(use_running_average=not training, momentum=0.9, epsilon=BN_EPS, dtype=dtype, name=name)


def _se_channels(channels: int, ratio: float, divisor: int) -> int:
    """timm's make_divisible(channels * ratio, divisor, round_limit=0): nearest multiple, at least `divisor`."""
    return max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)


class ConvNorm(nn.Module):
    """Conv without bias + BatchNorm (timm ConvNormAct without act), or with `fused` one conv with bias.
    [B,H,W,C] -> [B,H/stride,W/stride,features]."""

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    fused: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.features, self.kernel, self.stride, self.groups, self.fused, self.dtype, "conv")(x)
        return x if self.fused else batch_norm(self, self.dtype, "bn")(x)


class SqueezeExcite(nn.Module):
    """Channel gate x * sigmoid(fc2(relu(fc1(mean_hw(x))))) with 1x1 convs; [B,H,W,C] -> [B,H,W,C]."""

    reduced: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.astype(jnp.float32).mean(axis=(1, 2), keepdims=True).astype(self.dtype)
        s = nn.relu(_conv(self.reduced, 1, 1, 1, True, self.dtype, "fc1")(s))
        s = nn.sigmoid(_conv(x.shape[-1], 1, 1, 1, True, self.dtype, "fc2")(s))
        return x * s


class MobileOneBlock(nn.Module):
    """MobileOne block: sum of a BN identity branch (when shape-preserving), `num_conv_branches` kxk conv+BN
    branches and a 1x1 conv+BN scale branch, then optional squeeze-excite and GELU. Reparameterized: a single
    kxk conv with bias. `depthwise`: groups = input channels (timm group_size=1; the output may be a multiple
    of the input). [B,H,W,C] -> [B,H/stride,W/stride,features]."""

    features: int
    kernel: int
    stride: int = 1
    depthwise: bool = False
    use_se: bool = False
    use_act: bool = True
    use_scale_branch: bool = True
    num_conv_branches: int = 1
    reparameterized: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        groups = channels if self.depthwise else 1
        conv = functools.partial(ConvNorm, self.features, stride=self.stride, groups=groups, dtype=self.dtype)
        if self.reparameterized:
            y = _conv(self.features, self.kernel, self.stride, groups, True, self.dtype, "reparam_conv")(x)
        else:
            branches = []
            if self.features == channels and self.stride == 1:
                branches.append(batch_norm(self, self.dtype, "identity")(x))
            branches += [conv(self.kernel, name=f"conv_kxk_{i}")(x) for i in range(self.num_conv_branches)]
            if self.kernel > 1 and self.use_scale_branch:
                branches.append(conv(1, name="conv_scale")(x))
            y = functools.reduce(jnp.add, branches)
        if self.use_se:
            y = SqueezeExcite(_se_channels(self.features, 1 / 16, 1), self.dtype, name="se")(y)
        return _GELU(y) if self.use_act else y


class LargeKernelConv(nn.Module):
    """timm ReparamLargeKernelConv as used by MCi: 7x7 conv+BN plus 3x3 conv+BN, one group per input channel,
    optional squeeze-excite, GELU (fastvit_mci sets lkc_use_act). [B,H,W,C] -> [B,H/stride,W/stride,features]."""

    features: int
    kernel: int = 7
    small_kernel: int = 3
    stride: int = 2
    use_se: bool = False
    reparameterized: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(ConvNorm, self.features, stride=self.stride, groups=x.shape[-1], dtype=self.dtype)
        if self.reparameterized:
            y = _conv(self.features, self.kernel, self.stride, x.shape[-1], True, self.dtype, "reparam_conv")(x)
        else:
            y = conv(self.kernel, name="large_conv")(x) + conv(self.small_kernel, name="small_conv")(x)
        if self.use_se:
            y = SqueezeExcite(_se_channels(self.features, 0.25, 8), self.dtype, name="se")(y)
        return _GELU(y)


class PatchEmbed(nn.Module):
    """Stride-2 downsampling between stages: LargeKernelConv then a 1x1 MobileOne block. [B,H,W,C] -> [B,H/2,W/2,F]"""

    features: int
    use_se: bool = False
    reparameterized: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rep = self.reparameterized
        x = LargeKernelConv(self.features, use_se=self.use_se, reparameterized=rep, dtype=self.dtype, name="proj_0")(x)
        return MobileOneBlock(self.features, 1, reparameterized=rep, dtype=self.dtype, name="proj_1")(x)


class LayerScale(nn.Module):
    """Per-channel learnable scale `gamma` [C] (initialised to 1e-5, as timm). [..., C] -> [..., C]"""

    init_value: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


class RepMixer(nn.Module):
    """Token mixing x + gamma * (mixer(x) - norm(x)) with depthwise 3x3 MobileOne blocks (norm: BN identity
    only); reparameterized: one depthwise 3x3 conv with bias. [B,H,W,C] -> [B,H,W,C]."""

    kernel: int = 3
    reparameterized: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if self.reparameterized:
            return _conv(c, self.kernel, 1, c, True, self.dtype, "reparam_conv")(x)
        block = functools.partial(MobileOneBlock, c, self.kernel, depthwise=True, use_act=False, dtype=self.dtype)
        norm = block(use_scale_branch=False, num_conv_branches=0, name="norm")(x)
        mixer = block(name="mixer")(x)
        return x + LayerScale(name="layer_scale")(mixer - norm)


class ConvMlp(nn.Module):
    """ConvFFN: 7x7 depthwise conv + BN (folded into the conv when `fused`), 1x1 to `hidden`, GELU, 1x1 back.
    [B,H,W,C] -> [B,H,W,C]."""

    hidden: int
    fused: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = ConvNorm(c, 7, groups=c, fused=self.fused, dtype=self.dtype, name="conv")(x)
        x = _GELU(_conv(self.hidden, 1, 1, 1, True, self.dtype, "fc1")(x))
        return _conv(c, 1, 1, 1, True, self.dtype, "fc2")(x)


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions (head dim `head_dim`; qkv has a bias only when a
    BatchNorm was folded into it). [B,H,W,C] -> [B,H,W,C]; logits and softmax in float32."""

    head_dim: int = 32
    qkv_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        heads = c // self.head_dim
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.truncated_normal(0.02))
        qkv = dense(3 * c, use_bias=self.qkv_bias, name="qkv")(x.reshape(b, h * w, c))
        q, k, v = jnp.split(qkv.reshape(b, h * w, 3, heads, self.head_dim), 3, axis=2)  # each [B, N, 1, heads, d]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q[:, :, 0], k[:, :, 0], preferred_element_type=jnp.float32)
        attn = jax.nn.softmax(logits * self.head_dim**-0.5, axis=-1)
        # Kept only when an apply asks for mutable=["intermediates"] (the attention-distance analysis).
        self.sow("intermediates", "attention", attn)
        attn = attn.astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v[:, :, 0]).reshape(b, h * w, c)
        return dense(c, name="proj")(out).reshape(b, h, w, c)


class RepMixerBlock(nn.Module):
    """RepMixer token mixing, then x + drop(gamma * ConvFFN(x)). [B,H,W,C] -> [B,H,W,C].

    Stochastic depth (`drop_path`, see `DropPath`) drops only the ConvFFN branch, as timm's fastvit: RepMixer's
    x + gamma * (mixer(x) - norm(x)) is folded into one convolution by reparameterisation, not a residual branch.
    """

    mlp_ratio: float = 3.0
    reparameterized: bool = False
    dtype: Dtype = jnp.float32
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rep, hidden = self.reparameterized, int(x.shape[-1] * self.mlp_ratio)
        x = RepMixer(reparameterized=rep, dtype=self.dtype, name="token_mixer")(x)
        y = LayerScale(name="layer_scale")(ConvMlp(hidden, rep, self.dtype, name="mlp")(x))
        return x + DropPath(self.drop_path, name="drop_path")(y)


class AttentionBlock(nn.Module):
    """x + drop(gamma1 * Attention(BN(x))), then x + drop(gamma2 * ConvFFN(x)), drop being stochastic depth at
    rate `drop_path` (see `DropPath`) on both branches, as timm; reparameterized, the BatchNorm is folded into
    the qkv projection. [B,H,W,C] -> [B,H,W,C]."""

    mlp_ratio: float = 3.0
    head_dim: int = 32
    reparameterized: bool = False
    dtype: Dtype = jnp.float32
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rep, hidden = self.reparameterized, int(x.shape[-1] * self.mlp_ratio)
        y = x if rep else batch_norm(self, self.dtype, "norm")(x)
        y = Attention(self.head_dim, qkv_bias=rep, dtype=self.dtype, name="token_mixer")(y)
        x = x + DropPath(self.drop_path, name="drop_path_1")(LayerScale(name="layer_scale_1")(y))
        y = LayerScale(name="layer_scale_2")(ConvMlp(hidden, rep, self.dtype, name="mlp")(x))
        return x + DropPath(self.drop_path, name="drop_path_2")(y)


class RepCPE(nn.Module):
    """Conditional positional encoding x + depthwise_conv7x7(x); reparameterized: one conv with the identity
    folded into its centre tap. [B,H,W,C] -> [B,H,W,C]."""

    kernel: int = 7
    reparameterized: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if self.reparameterized:
            return _conv(c, self.kernel, 1, c, True, self.dtype, "reparam_conv")(x)
        return x + _conv(c, self.kernel, 1, c, True, self.dtype, "pos_enc")(x)


class Stage(nn.Module):
    """Optional stride-2 PatchEmbed, optional RepCPE, then `depth` blocks, block i with stochastic depth rate
    `drop_path[i]` (empty: none). [B,H,W,C] -> [B,H/s,W/s,features]."""

    features: int
    depth: int
    downsample: bool
    se_downsample: bool
    attention: bool
    mlp_ratio: float = 3.0
    head_dim: int = 32
    reparameterized: bool = False
    dtype: Dtype = jnp.float32
    drop_path: tuple[float, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.drop_path and len(self.drop_path) != self.depth:
            raise ValueError(f"{len(self.drop_path)} drop path rates for {self.depth} blocks")
        rates = self.drop_path or (0.0,) * self.depth
        rep = self.reparameterized
        if self.downsample:
            x = PatchEmbed(self.features, self.se_downsample, rep, self.dtype, name="downsample")(x)
        if self.attention:
            x = RepCPE(reparameterized=rep, dtype=self.dtype, name="pos_emb")(x)
        for i in range(self.depth):
            if self.attention:
                x = AttentionBlock(
                    self.mlp_ratio, self.head_dim, rep, self.dtype, drop_path=rates[i], name=f"blocks_{i}"
                )(x)
            else:
                x = RepMixerBlock(self.mlp_ratio, rep, self.dtype, drop_path=rates[i], name=f"blocks_{i}")(x)
        return x


class ClassifierHead(nn.Module):
    """Global average pool (float32) and linear `fc`: [B,H,W,C] -> (pooled [B,C], logits [B,num_classes])."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        pooled = x.astype(jnp.float32).mean(axis=(1, 2)).astype(self.dtype)
        fc = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.truncated_normal(0.02), name="fc")
        return pooled, fc(pooled)


class MCi(nn.Module):
    """MobileCLIP MCi image encoder (see the module docstring for layout, variables and BatchNorm).

    `__call__(images)` takes images [B, H, W, 3] float in [0, 1] (H, W multiples of 32) and returns a dict, all
    arrays in `dtype`:
      embedding  [B, num_classes]                  head/fc output, MobileCLIP's CLIP embedding (not normalised)
      pooled     [B, 2 * widths[-1]]               final_conv output, globally average-pooled
      features   {s: [B, H/s, W/s, widths[i]]}     outputs of stage i at stride s = 4, 8, 16, 32
    Parameter paths mirror timm's names ("stages.3.blocks.0" -> stages_3/blocks_0).
    `drop_path` is the stochastic depth rate of the last block, rising linearly from 0 over all blocks of all
    stages in order (timm's fastvit); it acts only in applies given a "dropout" rng (training).
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    num_classes: int = 512
    mlp_ratio: float = 3.0
    head_dim: int = 32
    reparameterized: bool = False
    dtype: Dtype = jnp.float32
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, Any]:
        if len(self.depths) != 4 or len(self.widths) != 4:
            raise ValueError(f"MCi has 4 stages, got depths {self.depths} and widths {self.widths}")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"MCi needs image sides that are multiples of 32, got {images.shape[1:3]}")
        rep, dtype = self.reparameterized, self.dtype
        stem = functools.partial(MobileOneBlock, self.widths[0], reparameterized=rep, dtype=dtype)
        x = stem(3, stride=2, name="stem_0")(images.astype(dtype))
        x = stem(3, stride=2, depthwise=True, name="stem_1")(x)
        x = stem(1, name="stem_2")(x)
        features = {}
        # One linspace over every block of every stage, cut into the stages' shares.
        rates = drop_path_rates(self.drop_path, sum(self.depths))
        starts = np.cumsum((0,) + tuple(self.depths))
        for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
            x = Stage(
                width,
                depth,
                downsample=i > 0,
                se_downsample=_SE_DOWNSAMPLE[i],
                attention=_ATTENTION[i],
                mlp_ratio=self.mlp_ratio,
                head_dim=self.head_dim,
                reparameterized=rep,
                dtype=dtype,
                drop_path=rates[starts[i] : starts[i + 1]],
                name=f"stages_{i}",
            )(x)
            features[4 * 2**i] = x
        x = MobileOneBlock(
            2 * self.widths[-1], 3, depthwise=True, use_se=True, reparameterized=rep, dtype=dtype, name="final_conv"
        )(x)
        pooled, embedding = ClassifierHead(self.num_classes, dtype, name="head")(x)
        return {"embedding": embedding, "pooled": pooled, "features": features}


def build_mci(
    name: str,
    num_classes: int = 512,
    reparameterized: bool = False,
    dtype: Dtype = jnp.float32,
    drop_path: float = 0.0,
) -> MCi:
    """The MCi encoder `name` ("mci0", "mci1" or "mci2") with a `num_classes`-d output (the CLIP embedding) and
    stochastic depth rising to `drop_path` at the last block (0: none)."""
    if name not in MCI_PRESETS:
        raise ValueError(f"unknown MCi preset {name!r}; known: {', '.join(MCI_PRESETS)}")
    return MCi(
        **MCI_PRESETS[name], num_classes=num_classes, reparameterized=reparameterized, dtype=dtype, drop_path=drop_path
    )


# ----------------------------------------------------------------------------------------------------------
# Reparameterisation. Works on float64 numpy copies (exact folding), returns float32 numpy arrays. Kernels are
# in Flax layout [kh, kw, in / groups, out].


def _fold_bn(kernel: np.ndarray, bn: dict, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """conv(x, kernel) followed by eval BatchNorm == conv(x, kernel * t) + (beta - mean * t), t = gamma/std."""
    t = bn["scale"] / np.sqrt(stats["var"] + BN_EPS)
    return kernel * t, bn["bias"] - stats["mean"] * t


def _identity_kernel(channels: int, in_per_group: int, kernel: int) -> np.ndarray:
    """Kernel [k, k, in_per_group, channels] of the identity map (1 at the centre tap of each channel's input)."""
    out = np.zeros((kernel, kernel, in_per_group, channels))
    out[kernel // 2, kernel // 2, np.arange(channels) % in_per_group, np.arange(channels)] = 1.0
    return out


def _pad_to(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads a [k, k, I, O] kernel to [size, size, I, O], centred (valid with timm's symmetric padding)."""
    p = (size - kernel.shape[0]) // 2
    return np.pad(kernel, ((p, p), (p, p), (0, 0), (0, 0)))


def _fold_mobileone(p: dict, s: dict, kernel: int, depthwise: bool) -> dict:
    """MobileOneBlock train-time variables -> {"reparam_conv": {kernel, bias}} (+ "se" unchanged)."""
    terms = [_fold_bn(p[k]["conv"]["kernel"], p[k]["bn"], s[k]["bn"]) for k in sorted(p) if k.startswith("conv_kxk")]
    if "conv_scale" in p:
        k1, b1 = _fold_bn(p["conv_scale"]["conv"]["kernel"], p["conv_scale"]["bn"], s["conv_scale"]["bn"])
        terms.append((_pad_to(k1, kernel), b1))
    if "identity" in p:
        channels = p["identity"]["scale"].shape[0]
        identity = _identity_kernel(channels, 1 if depthwise else channels, kernel)
        terms.append(_fold_bn(identity, p["identity"], s["identity"]))
    out = {"reparam_conv": {"kernel": sum(t[0] for t in terms), "bias": sum(t[1] for t in terms)}}
    if "se" in p:
        out["se"] = p["se"]
    return out


def _fold_large_kernel(p: dict, s: dict) -> dict:
    """LargeKernelConv: 7x7 and (padded) 3x3 conv+BN branches -> one 7x7 conv (+ "se" unchanged)."""
    large_k, large_b = _fold_bn(p["large_conv"]["conv"]["kernel"], p["large_conv"]["bn"], s["large_conv"]["bn"])
    small_k, small_b = _fold_bn(p["small_conv"]["conv"]["kernel"], p["small_conv"]["bn"], s["small_conv"]["bn"])
    out = {"reparam_conv": {"kernel": large_k + _pad_to(small_k, large_k.shape[0]), "bias": large_b + small_b}}
    if "se" in p:
        out["se"] = p["se"]
    return out


def _fold_mlp(p: dict, s: dict) -> dict:
    """ConvMlp: the depthwise conv's BatchNorm folds into that conv's new bias."""
    kernel, bias = _fold_bn(p["conv"]["conv"]["kernel"], p["conv"]["bn"], s["conv"]["bn"])
    return {"conv": {"conv": {"kernel": kernel, "bias": bias}}, "fc1": p["fc1"], "fc2": p["fc2"]}


def _fold_repmixer_block(p: dict, s: dict) -> dict:
    """x + g * (mixer(x) - norm(x)) is one depthwise conv: identity + g * (K_mixer - K_norm), bias g * (b_m - b_n)."""
    tm, ts = p["token_mixer"], s["token_mixer"]
    mixer = _fold_mobileone(tm["mixer"], ts["mixer"], 3, depthwise=True)["reparam_conv"]
    norm = _fold_mobileone(tm["norm"], ts["norm"], 3, depthwise=True)["reparam_conv"]
    gamma = tm["layer_scale"]["gamma"]
    kernel = _identity_kernel(gamma.shape[0], 1, 3) + gamma * (mixer["kernel"] - norm["kernel"])
    return {
        "token_mixer": {"reparam_conv": {"kernel": kernel, "bias": gamma * (mixer["bias"] - norm["bias"])}},
        "mlp": _fold_mlp(p["mlp"], s["mlp"]),
        "layer_scale": p["layer_scale"],
    }


def _fold_attention_block(p: dict, s: dict) -> dict:
    """The pre-attention BatchNorm x * t + c folds into qkv: kernel t[:, None] * W, bias c @ W."""
    t = p["norm"]["scale"] / np.sqrt(s["norm"]["var"] + BN_EPS)
    c = p["norm"]["bias"] - s["norm"]["mean"] * t
    w = p["token_mixer"]["qkv"]["kernel"]
    return {
        "token_mixer": {"qkv": {"kernel": t[:, None] * w, "bias": c @ w}, "proj": p["token_mixer"]["proj"]},
        "layer_scale_1": p["layer_scale_1"],
        "layer_scale_2": p["layer_scale_2"],
        "mlp": _fold_mlp(p["mlp"], s["mlp"]),
    }


def reparameterize(params: dict, name: str | MCi) -> dict:
    """Train-time variables {"params", "batch_stats"} (e.g. from `fastvit_to_mci`) -> {"params"} of the
    `reparameterized=True` module: all BatchNorms and branches folded (float32 numpy arrays, same function up
    to float rounding). `name` is a preset name or the (train-time or inference) MCi module."""
    module = name if isinstance(name, MCi) else build_mci(name)
    p, s = jax.tree.map(lambda a: np.asarray(a, np.float64), (params["params"], params["batch_stats"]))
    out: dict[str, Any] = {
        "stem_0": _fold_mobileone(p["stem_0"], s["stem_0"], 3, depthwise=False),
        "stem_1": _fold_mobileone(p["stem_1"], s["stem_1"], 3, depthwise=True),
        "stem_2": _fold_mobileone(p["stem_2"], s["stem_2"], 1, depthwise=False),
    }
    for i, depth in enumerate(module.depths):
        sp, ss = p[f"stages_{i}"], s[f"stages_{i}"]
        stage: dict[str, Any] = {}
        if i > 0:
            down, down_s = sp["downsample"], ss["downsample"]
            stage["downsample"] = {
                "proj_0": _fold_large_kernel(down["proj_0"], down_s["proj_0"]),
                "proj_1": _fold_mobileone(down["proj_1"], down_s["proj_1"], 1, depthwise=False),
            }
        if _ATTENTION[i]:
            pos = sp["pos_emb"]["pos_enc"]
            channels = pos["bias"].shape[0]
            kernel = pos["kernel"] + _identity_kernel(channels, 1, pos["kernel"].shape[0])
            stage["pos_emb"] = {"reparam_conv": {"kernel": kernel, "bias": pos["bias"]}}
        fold = _fold_attention_block if _ATTENTION[i] else _fold_repmixer_block
        for j in range(depth):
            stage[f"blocks_{j}"] = fold(sp[f"blocks_{j}"], ss[f"blocks_{j}"])
        out[f"stages_{i}"] = stage
    out["final_conv"] = _fold_mobileone(p["final_conv"], s["final_conv"], 3, depthwise=True)
    out["head"] = p["head"]
    return {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), out)}
