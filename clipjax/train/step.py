"""The one training step: every task (pretraining, classification, depth, segmentation, detection, and any
task added later) gives it a loss and gets the (state, batch) -> (state, metrics) function the loop jits.

What the step does around the task's loss is the same everywhere: the uint8 images are normalised on the
device, the randomness of step s is fold_in(state.rng, s) (a resumed run draws what an uninterrupted one
would), delayed scaling's FP8 statistics are advanced, the update goes through `TrainState.apply_gradients`
(non-finite steps skipped and counted, the EMA kept), and the loss, learning rate and gradient norm are logged.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax
from ml_collections import ConfigDict

from clipjax.data.transforms import normalize_images
from clipjax.models.fp8 import FP8_STATS, value_and_grad_advancing_fp8_stats
from clipjax.train.optim import global_norm, lr_schedule
from clipjax.train.state import TrainState

Metrics = dict[str, Any]
# (params, model_state, batch with float images, rng) -> (loss [], (new model_state, {name: [] metric}))
LossFn = Callable[[Any, Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Any, Metrics]]]


def apply_model(
    model: nn.Module, variables: dict[str, Any], *args: Any, update_batch_stats: bool, **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    """`model.apply(variables, *args, **kwargs)` and the model state after it: with `update_batch_stats`, the
    BatchNorms normalise with the batch's statistics (the global batch's, under a sharded jit) and the running
    averages come back updated; otherwise the stored statistics are used and the state is unchanged.

    Returns:
      (the model's output, the variables other than "params", updated or not).
    """
    state = {name: value for name, value in variables.items() if name != "params"}
    if update_batch_stats and "batch_stats" in variables:
        out, updates = model.apply(variables, *args, mutable=["batch_stats"], **kwargs)
        return out, {**state, **updates}
    return model.apply(variables, *args, **kwargs), state


def training_step(
    config: ConfigDict,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    constrain: Callable[[Any], Any] = lambda params: params,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]:
    """The (state, batch) -> (state, metrics) step of a task whose loss is `loss_fn`.

    Args:
      config: the run's config (optim for the schedule and EMA, data.normalize, total_steps).
      tx: the optimizer the state was created with.
      loss_fn: (params, model_state, batch, rng) -> (loss [], (new model_state, {name: [] extra metrics})); the
        batch's "image" (uint8 [B, H, W, 3] as the data pipeline yields it) arrives normalised (float32), the
        other entries as they are; rng is this step's key.
      constrain: projects the parameters after each update (e.g. clamping CLIP's logit scale).

    Returns:
      The step: metrics "train/loss", the extra ones, "train/lr" (the rate this update used),
      "train/grad_norm", "train/skipped_steps" and "train/bad_streak", all float32 / int32 scalars.
    """
    schedule = lr_schedule(config.optim, config.total_steps)

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        batch = {**batch, "image": normalize_images(batch["image"], config.data.normalize)}
        (loss, (model_state, extra)), grads, fp8_stats = value_and_grad_advancing_fp8_stats(loss_fn)(
            state.params, state.model_state, batch, rng
        )
        if fp8_stats is not None:  # delayed scaling: the amax histories advanced by this step's maxima
            model_state = {**model_state, FP8_STATS: fp8_stats}
        new_state, guard = state.apply_gradients(
            grads, loss, tx, constrain, model_state=model_state, ema_decay=config.optim.ema_decay
        )
        metrics = {
            "train/loss": loss,
            **extra,
            "train/lr": schedule(state.step),
            "train/grad_norm": global_norm(grads),
            **guard,
        }
        return new_state, metrics

    return train_step
