"""The train state: everything a step reads and writes, as one pytree that shards and checkpoints whole."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from clipjax.train.optim import global_norm


@dataclasses.dataclass(frozen=True)
class TrainState:
    """step: int32 []; params and opt_state: pytrees of float32 arrays; model_state: the model's other,
    non-trainable variable collections (e.g. {"batch_stats": ...} of MCi's frozen BatchNorms; {} for ViTs);
    rng: uint32 [2] base key; skipped_steps: int32 [] updates skipped for non-finite loss or gradients so
    far; bad_streak: int32 [] how many of the latest steps in a row were skipped; ema_params: None, or an
    exponential moving average of `params` (same structure, float32) when created with `ema=True`.

    Randomness in step s uses `jax.random.fold_in(rng, s)`, so a resumed run draws what an uninterrupted
    one would.

    A pytree whose children are the fields by name (jax.tree_util.GetAttrKey), ema_params only when it is
    not None (see `_flatten_with_keys`).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array
    skipped_steps: jax.Array
    bad_streak: jax.Array
    # Last and defaulted so that states built without EMA need not name it.
    ema_params: Any = None

    def replace(self, **updates: Any) -> TrainState:
        """A copy with the named fields replaced (as flax.struct dataclasses have)."""
        return dataclasses.replace(self, **updates)

    @classmethod
    def create(
        cls, variables: dict[str, Any], tx: optax.GradientTransformation, rng: jax.Array, ema: bool = False
    ) -> TrainState:
        """The state at step 0 from a model's variables ({"params": ..., other collections ...}); with `ema`,
        ema_params starts as a float32 copy of the parameters."""
        params = variables["params"]
        model_state = {name: value for name, value in variables.items() if name != "params"}
        # The state is donated to the step, and one buffer cannot be donated twice: the EMA starts as a copy of
        # the parameters, not the same arrays, and each counter gets its own zero.
        ema_params = jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params) if ema else None
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
            rng=rng,
            skipped_steps=jnp.zeros((), jnp.int32),
            bad_streak=jnp.zeros((), jnp.int32),
            ema_params=ema_params,
        )

    @property
    def variables(self) -> dict[str, Any]:
        """What `model.apply` takes: {"params": params, **model_state}."""
        return {"params": self.params, **self.model_state}

    @property
    def ema_variables(self) -> dict[str, Any]:
        """`variables` with the averaged parameters: {"params": ema_params, **model_state}.

        The non-trainable collections (e.g. BatchNorm statistics) are the live ones, not averaged.

        Raises:
          ValueError: the state has no EMA (created with ema=False).
        """
        if self.ema_params is None:
            raise ValueError("this train state keeps no parameter EMA (TrainState.create(..., ema=True) makes one)")
        return {"params": self.ema_params, **self.model_state}

    def apply_gradients(
        self,
        grads: Any,
        loss: jax.Array,
        tx: optax.GradientTransformation,
        constrain: Callable[[Any], Any] = lambda params: params,
        model_state: Any = None,
        ema_decay: float | jax.Array = 0.0,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update, or none if the loss or any gradient is not finite (or a gradient is too large to
        square in float32).

        A skipped step still advances `step` (its batch is consumed) and the learning-rate schedule, and is
        counted, so one bad batch costs one update instead of the run. `constrain` projects the parameters
        after an update; `model_state`, when given, replaces the non-trainable variables (e.g. BatchNorm
        running averages from this step's batch), under the same condition as the update. If the state keeps
        an EMA, a taken update also sets ema_params = ema_decay * ema_params + (1 - ema_decay) * new params
        (float32, after `constrain`); a skipped step leaves it as it was. Without an EMA `ema_decay` is
        ignored.

        Returns:
          (new state, {"train/skipped_steps", "train/bad_streak"} as int32 scalars).
        """
        # A NaN or infinite gradient makes the global norm non-finite, as does one too large to square in
        # float32 (> 1.8e19, as useless). The norm is computed anyway (clipping, the logged norm) and XLA
        # shares it; one isfinite reduction per parameter array would be ~400 more kernels per step.
        finite = jnp.isfinite(loss) & jnp.isfinite(global_norm(grads))

        new_model_state = self.model_state if model_state is None else model_state

        def update(operands: tuple[Any, Any, Any, Any]) -> tuple[Any, Any, Any, Any]:
            params, opt_state, _, ema = operands
            updates, opt_state = tx.update(grads, opt_state, params)
            params = constrain(optax.apply_updates(params, updates))
            if ema is not None:
                decay = jnp.asarray(ema_decay, jnp.float32)
                ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32), ema, params)
            return params, opt_state, new_model_state, ema

        # A select of the old and new values rather than a conditional: XLA fuses the select into the
        # update's own kernels (they read every parameter and moment anyway), whereas a conditional's
        # operands are copied in and out (in the ViT-B/16 step compiled for an H100: 910 copies, 6 GB of
        # memory traffic per step at batch 512; benchmarks/README.md).
        old = (self.params, self.opt_state, self.model_state, self.ema_params)

        def select(new: Any, kept: Any) -> Any:
            # The learning-rate schedule's count advances on a skipped step too, so the rate follows `step`
            # (what train/lr logs, and how PyTorch's schedulers step past an AMP-skipped update); Adam's own
            # count, like its moments, stays with the updates actually taken.
            if isinstance(new, optax.ScaleByScheduleState):
                return new
            return jax.tree.map(lambda n, k: jnp.where(finite, n, k), new, kept)

        params, opt_state, kept_model_state, ema_params = jax.tree.map(
            select, update(old), old, is_leaf=lambda node: isinstance(node, optax.ScaleByScheduleState)
        )
        skipped = self.skipped_steps + (~finite).astype(jnp.int32)
        streak = jnp.where(finite, 0, self.bad_streak + 1).astype(jnp.int32)
        new_state = self.replace(
            step=self.step + 1,
            params=params,
            opt_state=opt_state,
            model_state=kept_model_state,
            skipped_steps=skipped,
            bad_streak=streak,
            ema_params=ema_params,
        )
        return new_state, {"train/skipped_steps": skipped, "train/bad_streak": streak}


_FIELDS = ("step", "params", "opt_state", "model_state", "rng", "skipped_steps", "bad_streak")


def _flatten_with_keys(state: TrainState) -> tuple[list[tuple[jax.tree_util.GetAttrKey, Any]], bool]:
    """Children by field name; ema_params only when there is one.

    Leaving a None EMA out of the tree (rather than keeping an empty "ema_params" node) makes the
    checkpoint of a run without EMA exactly what it was before the field existed, so those checkpoints
    still restore: orbax refuses a target with a key the saved tree lacks, even an empty one.
    """
    has_ema = state.ema_params is not None
    names = _FIELDS + (("ema_params",) if has_ema else ())
    return [(jax.tree_util.GetAttrKey(name), getattr(state, name)) for name in names], has_ema


def _unflatten(has_ema: bool, children: Any) -> TrainState:
    names = _FIELDS + (("ema_params",) if has_ema else ())
    return TrainState(**dict(zip(names, children)))


jax.tree_util.register_pytree_with_keys(TrainState, _flatten_with_keys, _unflatten)
