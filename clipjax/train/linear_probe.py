"""Linear heads on frozen, cached features (DINOv2's linear protocol): fitting with AdamW on minibatches drawn
from host arrays, and scoring, for classification, segmentation and depth.

A head is `standardise -> Dense`: every feature channel is standardised by the training features' mean and
standard deviation (a BatchNorm frozen at the data's statistics), then one linear map. Classification maps a
feature vector [D] to K logits; segmentation maps each patch token [h, w, D] to K logits, upsampled
bilinearly to the label map for the loss and the metric; depth maps each patch token (with the image's CLS or
pooled feature appended) to max_depth * sigmoid(.) metres, upsampled bilinearly likewise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clipjax.evals.depth_metrics import depth_metric_sums, depth_metrics_from_sums
from clipjax.evals.segmentation_metrics import confusion_matrix, segmentation_metrics
from clipjax.losses.classification import topk_correct
from clipjax.losses.depth import silog_loss
from clipjax.losses.segmentation import segmentation_loss
from clipjax.ops.resize import resize_bilinear, resize_logits

PROBE_KINDS = ("classify", "segment", "depth")
STEPS_PER_CALL = 100  # fitting steps run in one device call (a scan), at most
CALL_BYTES = 256 * 2**20  # ... and at most this much input data sent for one call
# The metric each kind's grid search maximises (depth: minus the rmse).
SELECTION = {"classify": "top1", "segment": "miou", "depth": "rmse"}


@dataclasses.dataclass
class ProbeData:
    """Cached features and their targets, host numpy arrays with a leading example axis.

    features: classify float [N, D]; segment / depth float [N, h, w, D] (float16 is fine).
    targets: classify int [N] classes; segment uint8 [N, H, W] (255 ignored); depth float32 [N, H, W] metres.
    extra: depth only, float [N, D'] the image's CLS / pooled feature, appended to every token.
    """

    features: np.ndarray
    targets: np.ndarray
    extra: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)

    def take(self, index: np.ndarray) -> ProbeData:
        return ProbeData(self.features[index], self.targets[index], None if self.extra is None else self.extra[index])


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """What the head predicts: `kind` (PROBE_KINDS), `outputs` (classes; 1 for depth), and the depth range
    and loss weight of depth probes."""

    kind: str
    outputs: int
    max_depth: float = 10.0
    min_depth: float = 1e-3
    silog_lambda: float = 0.5


def _inputs(data: ProbeData, spec: ProbeSpec) -> np.ndarray:
    """The head's input channels: the features, and for depth the image's global feature on every token."""
    if spec.kind != "depth" or data.extra is None:
        return data.features
    grid = data.features.shape[1:3]
    extra = np.broadcast_to(data.extra[:, None, None, :], (len(data), *grid, data.extra.shape[-1]))
    return np.concatenate([data.features, extra.astype(data.features.dtype)], axis=-1)


def init_head(train: ProbeData, spec: ProbeSpec, seed: int = 0) -> dict[str, Any]:
    """A head for `train`'s features: {"mean", "std" float32 [C] (the training inputs' statistics), "kernel"
    [C, outputs] (small normal), "bias" [outputs]}."""
    x = _inputs(train, spec).astype(np.float32)
    flat = x.reshape(-1, x.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    kernel = np.random.default_rng(seed).normal(0.0, 0.01, (flat.shape[-1], spec.outputs)).astype(np.float32)
    return {"mean": mean, "std": std, "kernel": kernel, "bias": np.zeros(spec.outputs, np.float32)}


def apply_head(head: dict[str, Any], x: jax.Array, spec: ProbeSpec) -> jax.Array:
    """Logits [B, (h, w,) K], or depth [B, h, w] in metres, from head inputs [B, (h, w,) C]."""
    y = ((x.astype(jnp.float32) - head["mean"]) / head["std"]) @ head["kernel"] + head["bias"]
    if spec.kind == "depth":
        return spec.max_depth * jax.nn.sigmoid(y[..., 0])
    return y


def _loss(head: dict[str, Any], x: jax.Array, targets: jax.Array, spec: ProbeSpec) -> jax.Array:
    out = apply_head(head, x, spec)
    if spec.kind == "classify":
        return optax.softmax_cross_entropy_with_integer_labels(out, targets).mean()
    if spec.kind == "segment":
        return segmentation_loss(out, targets.astype(jnp.int32))
    pred = resize_bilinear(out[..., None], targets.shape[1:3])[..., 0]
    valid = (targets > spec.min_depth) & (targets < spec.max_depth)
    return silog_loss(pred, targets, valid, spec.silog_lambda)


@functools.lru_cache(maxsize=None)
def _compiled(spec: ProbeSpec) -> tuple[Any, Any]:
    """(train step, scoring chunk), jitted once per spec: the learning rate, the weight decay and the head are
    arguments, so a grid search compiles each function once per input shape, not once per grid point."""
    adam = optax.scale_by_adam()

    def one_step(carry: tuple, inputs: tuple, fixed: dict, decay: jax.Array) -> tuple[tuple, None]:
        params, state = carry
        x, y, lr = inputs
        grads = jax.grad(lambda p: _loss({**fixed, **p}, x, y, spec))(params)
        updates, state = adam.update(grads, state)
        # AdamW (optax.adamw's order): the Adam step plus the decoupled decay of the kernel (not the bias).
        params = {
            "kernel": params["kernel"] - lr * (updates["kernel"] + decay * params["kernel"]),
            "bias": params["bias"] - lr * updates["bias"],
        }
        return (params, state), None

    def steps(params: dict, state: Any, fixed: dict, x: jax.Array, y: jax.Array, lr: jax.Array, decay: jax.Array):
        """Several steps in one call (a scan over x [S, b, ...], y [S, b, ...], lr [S]): one dispatch each."""
        (params, state), _ = jax.lax.scan(
            lambda carry, inputs: one_step(carry, inputs, fixed, decay), (params, state), (x, y, lr)
        )
        return params, state

    def chunk(head: dict, x: jax.Array, targets: jax.Array) -> jax.Array:
        out = apply_head(head, x, spec)
        if spec.kind == "classify":
            correct = topk_correct(out, targets, (1, 5))
            return jnp.stack([jnp.sum(correct[1]), jnp.sum(correct[5])]).astype(jnp.float32)
        valid = jnp.ones(len(x), bool)
        if spec.kind == "segment":
            logits = resize_logits(out, targets.shape[1:3])
            return confusion_matrix(jnp.argmax(logits, -1), targets, spec.outputs, valid)
        pred = resize_bilinear(out[..., None], targets.shape[1:3])[..., 0]
        # No Eigen crop: the probe's depth views are central squares of the frames (clipjax/data/probe_views.py).
        return depth_metric_sums(pred, targets, valid, min_depth=spec.min_depth, max_depth=spec.max_depth,
                                 eigen=False)  # fmt: skip

    return jax.jit(steps), jax.jit(chunk)


def fit_head(
    train: ProbeData,
    spec: ProbeSpec,
    *,
    lr: float,
    weight_decay: float,
    steps: int,
    batch_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """AdamW (cosine decay from `lr` to 0, decoupled `weight_decay` on the kernel only) for `steps`
    minibatches of `batch_size` examples (all of them when fewer) drawn without replacement from `train`,
    epoch after epoch, in an order fixed by `seed`. Returns the head (host arrays)."""
    x_all, y_all = _inputs(train, spec), train.targets
    head = jax.tree.map(jnp.asarray, init_head(train, spec, seed))
    fixed = {"mean": head["mean"], "std": head["std"]}
    params = {"kernel": head["kernel"], "bias": head["bias"]}
    run_steps, _ = _compiled(spec)
    state = optax.scale_by_adam().init(params)
    rng = np.random.default_rng(seed)
    size = min(batch_size, len(train))
    order, position, batches = rng.permutation(len(train)), 0, []
    for _ in range(steps):
        if position + size > len(order):
            order, position = rng.permutation(len(train)), 0
        batches.append(np.sort(order[position : position + size]))
        position += size
    rates = (lr * 0.5 * (1 + np.cos(np.pi * np.arange(steps) / steps))).astype(np.float32)  # cosine to 0
    # Minibatches go to the device STEPS_PER_CALL at a time (fewer when they are large), one scan each.
    per_call = max(1, min(STEPS_PER_CALL, CALL_BYTES // max(1, x_all[batches[0]].nbytes + y_all[batches[0]].nbytes)))
    for start in range(0, steps, per_call):
        index = np.stack(batches[start : start + per_call])
        params, state = run_steps(params, state, fixed, jnp.asarray(x_all[index]), jnp.asarray(y_all[index]),
                                  jnp.asarray(rates[start : start + per_call]), np.float32(weight_decay))  # fmt: skip
    return jax.tree.map(np.asarray, {**fixed, **params})


def score_head(head: dict[str, Any], data: ProbeData, spec: ProbeSpec, batch_size: int = 256) -> dict[str, float]:
    """The head's metrics over every example of `data` (exact; in chunks of `batch_size`): classify
    {"top1", "top5"}, segment {"miou", "macc", "aacc"} (the dataset's confusion matrix), depth
    {"rmse", "abs_rel", ..., "delta3"} (per-image means over valid pixels)."""
    x_all = _inputs(data, spec)
    head = jax.tree.map(jnp.asarray, head)
    _, chunk = _compiled(spec)
    total = None
    for start in range(0, len(data), batch_size):
        part = slice(start, start + batch_size)
        value = np.asarray(chunk(head, jnp.asarray(x_all[part]), jnp.asarray(data.targets[part])), np.float64)
        total = value if total is None else total + value
    if spec.kind == "classify":
        return {"top1": float(total[0] / len(data)), "top5": float(total[1] / len(data))}
    if spec.kind == "segment":
        metrics, _ = segmentation_metrics(total.astype(np.int64), prefix="eval")
    else:
        metrics = depth_metrics_from_sums(total, prefix="eval")
    return {key.removeprefix("eval/"): value for key, value in metrics.items()}


def select_head(
    train: ProbeData,
    spec: ProbeSpec,
    *,
    lrs: tuple[float, ...],
    weight_decays: tuple[float, ...],
    holdout: float,
    steps: int,
    batch_size: int,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grid search: a head fitted for every (lr, weight decay) on `train` less a held-out slice (its last
    `holdout` share, at least one example), scored there by SELECTION[spec.kind]; the best is returned.

    Returns:
      (the best head, {"lr", "weight_decay", "holdout_metric", "grid": [{"lr", "weight_decay", metric}]}).
    """
    held = max(1, int(round(len(train) * holdout)))
    if held >= len(train):
        raise ValueError(f"{len(train)} training examples leave none to fit on after holding {held} out")
    fit_on, score_on = train.take(np.arange(len(train) - held)), train.take(np.arange(len(train) - held, len(train)))
    metric, lower = SELECTION[spec.kind], spec.kind == "depth"
    grid, best = [], None
    for lr in lrs:
        for weight_decay in weight_decays:
            head = fit_head(fit_on, spec, lr=lr, weight_decay=weight_decay, steps=steps, batch_size=batch_size,
                            seed=seed)  # fmt: skip
            value = score_head(head, score_on, spec)[metric]
            grid.append({"lr": lr, "weight_decay": weight_decay, metric: value})
            key = -value if lower else value
            if best is None or key > best[0]:
                best = (key, head, lr, weight_decay, value)
    _, head, lr, weight_decay, value = best
    return head, {"lr": lr, "weight_decay": weight_decay, "holdout_metric": value, "grid": grid}
