"""Transformer building blocks shared by the image and text towers (Flax Linen).

Blocks are pre-norm (LayerNorm before attention and MLP), as in CLIP, open_clip and big_vision. Matmuls
run in `dtype` (e.g. bfloat16) with float32 parameters; softmax and LayerNorm statistics stay float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.fp8 import FP8_STATS, dense_product

Dtype = Any
# How a dense kernel starts: "xavier" (Glorot uniform over the flattened [in, out] kernel; the fused qkv as
# PyTorch's nn.MultiheadAttention), "torch" (PyTorch's nn.Linear default, uniform in +-1/sqrt(fan_in)) or a
# float, the standard deviation of a normal draw (open_clip's text tower).
KernelInit = str | float
# A block's four dense kernels: (qkv, attention output, fc1, fc2).
BlockInits = tuple[KernelInit, KernelInit, KernelInit, KernelInit]
XAVIER_INITS: BlockInits = ("xavier", "xavier", "xavier", "xavier")


def kernel_initializer(spec: KernelInit) -> Callable:
    """The Flax initializer a `KernelInit` names (for nn.Dense / nn.DenseGeneral kernels)."""
    if spec == "xavier":
        return nn.initializers.xavier_uniform()
    if spec == "torch":
        return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # bound sqrt(3 / 3 / fan_in)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec > 0:
        return nn.initializers.normal(stddev=float(spec))
    raise ValueError(f"kernel init {spec!r} is not 'xavier', 'torch' or a positive standard deviation")


def open_clip_text_inits(width: int, depth: int) -> BlockInits:
    """open_clip's TextTransformer.init_parameters: normal draws, the residual branches' output projections
    scaled down with depth (width^-1/2 (2 depth)^-1/2), so the residual stream grows slowly through the blocks."""
    residual = width**-0.5 * (2 * depth) ** -0.5
    return (width**-0.5, residual, (2 * width) ** -0.5, residual)


# open_clip's VisionTransformer defines no init of its blocks: PyTorch's nn.MultiheadAttention (Xavier for the
# fused qkv projection) and nn.Linear defaults elsewhere.
OPEN_CLIP_VISION_INITS: BlockInits = ("xavier", "torch", "torch", "torch")


def keeps_only_its_input(activation: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """`activation` (elementwise, any shape and dtype) with the same values and gradients, whose backward pass
    keeps only its input x and recomputes the rest from x inside its own fused kernel.

    Plain autodiff of the exact GELU keeps two more arrays of x's shape (erfc(-x/sqrt(2)) and -x/sqrt(2)),
    written by the forward kernel and read back by the backward one. The MLP's hidden activations are the
    largest in a transformer: for ViT-B/16 at batch 512 on an H100 this costs 17 GiB of memory and ~28 GB of
    memory traffic per step (the compiled program, benchmarks/README.md); recomputing an elementwise function
    inside a kernel that is memory-bound anyway adds arithmetic, not memory traffic.
    """
    return jax.checkpoint(activation)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": keeps_only_its_input(functools.partial(nn.gelu, approximate=False)),
    # OpenAI's original CLIP models were trained with this sigmoid approximation.
    "quick_gelu": keeps_only_its_input(lambda x: x * nn.sigmoid(1.702 * x)),
    # The tanh approximation (Flax's and big_vision's default): for training from scratch; on GPUs XLA can
    # fuse it with the bias into cuBLASLt's matmul epilogue, which has no exact-erf form.
    "gelu_tanh": keeps_only_its_input(functools.partial(nn.gelu, approximate=True)),
}

# JAX's primitive for cuDNN's fused attention forward (jax._src.cudnn.fused_attention_stablehlo).
CUDNN_ATTENTION_FORWARD = "dot_product_attention_fwd_wrapper"


def dots_and_attention_saveable(prim: Any, *args: Any, **params: Any) -> bool:
    """Rematerialisation policy: save what `dots_with_no_batch_dims_saveable` saves, and cuDNN's fused
    attention forward (two matmuls in one kernel) with its softmax statistics. The kernel is a custom call,
    not a dot, so the plain policy would run it again in the backward pass (one more attention forward per
    block; tests/test_gpu_lowering.py counts the calls)."""
    return prim.name == CUDNN_ATTENTION_FORWARD or jax.checkpoint_policies.dots_with_no_batch_dims_saveable(
        prim, *args, **params
    )


REMAT_POLICIES: dict[str, Any] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": dots_and_attention_saveable,
}

LAYER_NORM_EPS = 1e-5  # open_clip's value; converted checkpoints depend on it

# How the fused attention runs: "xla" (XLA's fusions; any backend and dtype), "cudnn" (cuDNN's flash
# attention: CUDA GPUs, bfloat16/float16, head dim a multiple of 8 up to 128), "auto" (cuDNN where it
# applies, else XLA).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def accelerator_platform() -> str:
    """ "cuda", "rocm", "tpu" or "cpu": JAX's default backend, with GPUs told apart by their runtime."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    version = getattr(jax.devices()[0].client, "platform_version", "").lower()
    return "rocm" if "rocm" in version else "cuda"


def attention_implementation(requested: str, dtype: Dtype, head_dim: int, platform: str | None = None) -> str:
    """Resolves `requested` ("auto", "xla" or "cudnn") to what `jax.nn.dot_product_attention` runs.

    "auto" picks cuDNN's flash attention on a CUDA GPU for half-precision inputs with a supported head dim
    (it never materialises the [B, heads, N, N] logits), XLA otherwise. An explicit "cudnn" where cuDNN
    cannot run raises a one-line ValueError naming why.
    """
    if requested not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {requested!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
    platform = platform or accelerator_platform()
    problems = []
    if platform != "cuda":
        problems.append(f"it needs a CUDA GPU (the platform is {platform!r})")
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
        problems.append(f"it needs bfloat16 or float16 (the compute dtype is {jnp.dtype(dtype).name})")
    if head_dim % 8 or head_dim > 128:
        problems.append(f"it needs a head dim that is a multiple of 8 up to 128 (got {head_dim})")
    if requested == "cudnn" and problems:
        raise ValueError(f"cuDNN attention cannot run here: {'; '.join(problems)}; use attention 'auto' or 'xla'")
    if requested == "auto":
        return "xla" if problems else "cudnn"
    return requested


def layer_norm(name: str, dtype: Dtype, epsilon: float = LAYER_NORM_EPS) -> nn.LayerNorm:
    """LayerNorm (CLIP's epsilon unless given); statistics are computed in float32 whatever `dtype` is."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


def drop_path_rates(rate: float, depth: int) -> tuple[float, ...]:
    """Per-block stochastic depth rates: `depth` values rising linearly from 0 (first block) to `rate` (last),
    timm's `linspace(0, rate, depth)` (a single block gets 0). Python floats, so modules stay hashable."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"drop path rate must be in [0, 1], got {rate}")
    return tuple(float(r) for r in np.linspace(0.0, rate, depth))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016, timm's DropPath): drops a residual branch for whole samples.

    `__call__(x [B, ...]) -> [B, ...]` in x's dtype. Active only when `rate` > 0 and the apply has a "dropout"
    rng (training steps pass `rngs={"dropout": key}`; evaluation never does, so it is deterministic there).
    Then each sample is kept with probability 1 - rate and scaled by 1 / (1 - rate), so the expectation is
    unchanged; otherwise x is returned as it is (no parameters, no rng needed).
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, rate: jax.Array | None = None) -> jax.Array:
        """`rate`, a float32 scalar, replaces the static `self.rate` where it is only known when tracing (a
        scanned stack of blocks, each with its own rate)."""
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"drop path rate must be in [0, 1], got {self.rate}")
        if (rate is None and self.rate == 0.0) or not self.has_rng("dropout"):
            return x
        keep_prob = 1.0 - (self.rate if rate is None else rate)
        # One draw per sample, broadcast over every other axis: the whole branch is dropped, not elements.
        keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
        if rate is None and keep_prob == 0.0:  # rate 1: always dropped (timm does not rescale then)
            return jnp.zeros_like(x)
        if rate is not None:  # a traced rate of 1 drops every sample; keep 1 / keep_prob finite for the gradient
            keep_prob = jnp.maximum(keep_prob, jnp.finfo(jnp.float32).tiny)
        # Scale in at least float32 so a bfloat16 branch is rounded once, not also by a rounded 1 / keep_prob.
        scaled = (x.astype(jnp.promote_types(x.dtype, jnp.float32)) / keep_prob).astype(x.dtype)
        return jnp.where(keep, scaled, jnp.zeros((), x.dtype))


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> activation -> Dense(width). Input and output [..., width]; `fp8`: the FP8 recipe of
    both products ("none", "switchback" or "all"), `fp8_amax_history`: 0 for current scaling, N for delayed
    scaling from the last N steps' maxima (clipjax.models.fp8.dense_product); `fc1_init`, `fc2_init`: how the
    kernels start (`KernelInit`)."""

    mlp_dim: int
    act: str = "gelu"
    dtype: Dtype = jnp.float32
    fp8: str = "none"
    fp8_amax_history: int = 0
    fc1_init: KernelInit = "xavier"
    fc2_init: KernelInit = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, **dense_product(self.fp8, self.fp8_amax_history))
        x = ACTIVATIONS[self.act](dense(self.mlp_dim, kernel_init=kernel_initializer(self.fc1_init), name="fc1")(x))
        return dense(width, kernel_init=kernel_initializer(self.fc2_init), name="fc2")(x)


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, causal: bool, implementation: str, pad_odd: bool = False
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v through `jax.nn.dot_product_attention`: q, k, v [B, N, heads, d] -> [B, N,
    heads, d] in their dtype.

    With `pad_odd`, an odd N is padded by one token that the kernel masks out by sequence length and the
    output drops: JAX runs cuDNN's training kernels only for even lengths (ViT-B/16's 197 tokens and CLIP's
    77 are odd), and the masked token changes nothing else.
    """
    n = q.shape[1]
    if not (pad_odd and n % 2):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)
    pad = ((0, 0), (0, 1), (0, 0), (0, 0))
    lengths = jnp.full((q.shape[0],), n, jnp.int32)
    out = jax.nn.dot_product_attention(
        jnp.pad(q, pad),
        jnp.pad(k, pad),
        jnp.pad(v, pad),
        is_causal=causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return out[:, :n]


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection.

    `__call__(x [B, N, width]) -> (out [B, N, width], weights [B, heads, N, N] float32 or None)`; the weights
    are computed (by an explicit softmax) only when `return_weights` is set, otherwise the fused
    `jax.nn.dot_product_attention` runs with the implementation `attention` resolves to (see
    `attention_implementation`). `fp8` and `fp8_amax_history`: the FP8 products of the two projections, as in
    `MlpBlock` (attention itself stays in `dtype`); `qkv_init`, `out_init`: how their kernels start.
    """

    num_heads: int
    causal: bool = False
    return_weights: bool = False
    attention: str = "auto"
    dtype: Dtype = jnp.float32
    fp8: str = "none"
    fp8_amax_history: int = 0
    qkv_init: KernelInit = "xavier"
    out_init: KernelInit = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        dense = functools.partial(nn.DenseGeneral, dtype=self.dtype, **dense_product(self.fp8, self.fp8_amax_history))
        # DenseGeneral initialises the kernel as its flattened [in, out] matrix: Xavier's fans are PyTorch's.
        qkv = dense((3, self.num_heads, head_dim), kernel_init=kernel_initializer(self.qkv_init), name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, N, heads, head_dim]
        weights = None
        if self.return_weights:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            logits = logits / math.sqrt(head_dim)
            if self.causal:
                n = x.shape[1]
                logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, -jnp.inf)
            weights = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        else:
            implementation = attention_implementation(self.attention, q.dtype, head_dim)
            out = fused_attention(q, k, v, self.causal, implementation, pad_odd=implementation == "cudnn")
        out = dense(width, axis=(-2, -1), kernel_init=kernel_initializer(self.out_init), name="out")(out)
        return out, weights


def window_partition(x: jax.Array, grid_h: int, grid_w: int, size: int) -> jax.Array:
    """Tokens of a patch grid into non-overlapping size x size windows, as ViTDet: [B, grid_h * grid_w, D] ->
    [B * windows, size * size, D], the grid padded with zeros at the bottom and right to multiples of `size`
    (the padding tokens take part in their windows' attention, unmasked, as in ViTDet)."""
    batch, _, width = x.shape
    ph, pw = -(-grid_h // size) * size, -(-grid_w // size) * size
    x = jnp.pad(x.reshape(batch, grid_h, grid_w, width), ((0, 0), (0, ph - grid_h), (0, pw - grid_w), (0, 0)))
    x = x.reshape(batch, ph // size, size, pw // size, size, width).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, width)


def window_merge(x: jax.Array, batch: int, grid_h: int, grid_w: int, size: int) -> jax.Array:
    """The inverse of `window_partition`: [B * windows, size * size, D] -> [B, grid_h * grid_w, D], padding
    dropped."""
    ph, pw = -(-grid_h // size) * size, -(-grid_w // size) * size
    width = x.shape[-1]
    x = x.reshape(batch, ph // size, pw // size, size, size, width).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, ph, pw, width)[:, :grid_h, :grid_w].reshape(batch, grid_h * grid_w, width)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + drop(attn(ln_1(x))), then x + drop(mlp(ln_2(x))), drop being
    `DropPath(drop_path)` (the identity unless training with a "dropout" rng). x [B, N, width] in `dtype`;
    returns (x [B, N, width], attn weights [B, heads, N, N] float32 or None). `fp8` and `fp8_amax_history`:
    the FP8 products of the four dense layers, as in `MlpBlock`."""

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    return_weights: bool = False
    attention: str = "auto"
    dtype: Dtype = jnp.float32
    drop_path: float = 0.0  # stochastic depth rate of both residual branches
    norm_eps: float = LAYER_NORM_EPS  # timm's ViTs use 1e-6
    # (grid height, grid width, window side): attend within non-overlapping windows of a patch grid (ViTDet);
    # None attends globally.
    window: tuple[int, int, int] | None = None
    fp8: str = "none"
    fp8_amax_history: int = 0
    inits: BlockInits = XAVIER_INITS  # how the (qkv, out, fc1, fc2) kernels start

    @nn.compact
    def __call__(self, x: jax.Array, drop_rate: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """`drop_rate` (a float32 scalar) replaces `drop_path` where it is traced (see `DropPath`)."""
        y = layer_norm("ln_1", self.dtype, self.norm_eps)(x)
        if self.window is not None:
            y = window_partition(y, *self.window)
        y, weights = SelfAttention(
            self.num_heads,
            causal=self.causal,
            return_weights=self.return_weights,
            attention=self.attention,
            dtype=self.dtype,
            fp8=self.fp8,
            fp8_amax_history=self.fp8_amax_history,
            qkv_init=self.inits[0],
            out_init=self.inits[1],
            name="attn",
        )(y)
        if self.window is not None:
            y = window_merge(y, x.shape[0], *self.window)
        x = x + DropPath(self.drop_path, name="drop_path_1")(y, drop_rate)
        mlp = MlpBlock(
            self.mlp_dim, act=self.act, dtype=self.dtype, fp8=self.fp8, fp8_amax_history=self.fp8_amax_history,
            fc1_init=self.inits[2], fc2_init=self.inits[3], name="mlp",
        )  # fmt: skip
        y = mlp(layer_norm("ln_2", self.dtype, self.norm_eps)(x))
        x = x + DropPath(self.drop_path, name="drop_path_2")(y, drop_rate)
        return x, weights


class _ScannedBlock(EncoderBlock):
    """An EncoderBlock as `nn.scan` steps it: (x, drop rate) -> (x, (x or None, attention weights or None)),
    the block's output also emitted (stacked over blocks by the scan) when `keep_output`."""

    keep_output: bool = False

    def __call__(self, x: jax.Array, drop_rate: jax.Array | None = None) -> tuple[jax.Array, tuple]:
        x, weights = super().__call__(x, drop_rate)
        return x, (x if self.keep_output else None, weights)


class Encoder(nn.Module):
    """A stack of `depth` EncoderBlocks named block_0 .. block_{depth-1}, or with `scan` one block `blocks`
    whose parameters carry a leading [depth] axis, stepped by `nn.scan`.

    `__call__(x [B, N, width], return_layers=(i, ...), return_attention=False)` returns
    `(x, layers, attention)`: `layers` maps each requested block index (negative counts from the end) to
    that block's output [B, N, width]; `attention` lists every block's weights [B, heads, N, N] when asked.
    `drop_path` holds each block's stochastic depth rate (e.g. `drop_path_rates(rate, depth)`); empty: none.

    `scan` compiles one block instead of `depth` (XLA's compile time and program size no longer grow with
    depth) and computes the same function; the parameter trees differ only in layout
    (`clipjax.models.scan_layout` converts between them). Window attention needs unscanned blocks (windowed
    and global blocks differ).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    remat: str = "none"
    attention: str = "auto"
    dtype: Dtype = jnp.float32
    drop_path: tuple[float, ...] = ()
    norm_eps: float = LAYER_NORM_EPS  # the blocks' LayerNorm epsilon
    # ViTDet's backbone: blocks not in `global_blocks` attend within window_size x window_size windows of the
    # patch grid given to __call__ (x then holds only patch tokens). 0: every block attends globally.
    window_size: int = 0
    global_blocks: tuple[int, ...] = ()
    scan: bool = False
    fp8: str = "none"  # FP8 products in the blocks' dense layers: a recipe of clipjax.models.fp8
    fp8_amax_history: int = 0  # 0: current scaling; N: delayed scaling from the last N steps' maxima
    inits: BlockInits = XAVIER_INITS  # how each block's (qkv, out, fc1, fc2) kernels start

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        return_layers: tuple[int, ...] = (),
        return_attention: bool = False,
        grid: tuple[int, int] | None = None,
    ) -> tuple[jax.Array, dict[int, jax.Array], list[jax.Array]]:
        if self.drop_path and len(self.drop_path) != self.depth:
            raise ValueError(f"{len(self.drop_path)} drop path rates for {self.depth} blocks")
        rates = self.drop_path or (0.0,) * self.depth
        wanted = {i % self.depth for i in return_layers}
        if self.window_size and (grid is None or grid[0] * grid[1] != x.shape[1]):
            raise ValueError(f"window attention needs the patch grid of the {x.shape[1]} tokens, got {grid}")
        block_options = dict(
            act=self.act,
            causal=self.causal,
            return_weights=return_attention,
            attention=self.attention,
            dtype=self.dtype,
            norm_eps=self.norm_eps,
            fp8=self.fp8,
            fp8_amax_history=self.fp8_amax_history,
            inits=self.inits,
        )
        if self.scan:
            return self._scanned(x, wanted, return_attention, rates, block_options)
        block_cls = EncoderBlock
        if self.remat != "none":
            # Recomputing each block in the backward pass trades ~1/3 more compute for activation memory.
            block_cls = nn.remat(EncoderBlock, policy=REMAT_POLICIES[self.remat], prevent_cse=True)
        layers, attention = {}, []
        for i in range(self.depth):
            windowed = self.window_size > 0 and i not in self.global_blocks
            x, weights = block_cls(
                self.num_heads,
                self.mlp_dim,
                drop_path=rates[i],
                window=(*grid, self.window_size) if windowed else None,
                name=f"block_{i}",
                **block_options,
            )(x)
            if i in wanted:
                layers[i] = x
            if return_attention:
                attention.append(weights)
        return x, layers, attention

    def _scanned(
        self, x: jax.Array, wanted: set[int], return_attention: bool, rates: tuple[float, ...], block_options: dict
    ) -> tuple[jax.Array, dict[int, jax.Array], list[jax.Array]]:
        """The blocks as one `nn.scan` over a [depth]-stacked block; per-block drop rates go in as scanned
        float32 scalars. Requested layers and weights come out stacked and are split per block."""
        if self.window_size and len(self.global_blocks) < self.depth:
            raise ValueError("a scanned encoder cannot mix windowed and global blocks; use scan=False")
        block_cls = _ScannedBlock
        if self.remat != "none":
            # Inside a scan, XLA cannot merge the recomputation across iterations, so no CSE barrier is needed.
            block_cls = nn.remat(_ScannedBlock, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        varying = any(rates)
        scanned = nn.scan(
            block_cls,
            variable_axes={"params": 0, FP8_STATS: 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=0 if varying else nn.broadcast,
            length=self.depth,
        )
        x, (outputs, weights) = scanned(
            self.num_heads, self.mlp_dim, keep_output=bool(wanted), name="blocks", **block_options
        )(x, jnp.asarray(rates, jnp.float32) if varying else None)
        layers = {i: outputs[i] for i in sorted(wanted)}
        return x, layers, list(weights) if return_attention else []
