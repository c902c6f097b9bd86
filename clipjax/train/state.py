"""The train state: everything a step reads and writes, as one pytree that shards and checkpoints whole."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params and opt_state: pytrees of float32 arrays; model_state: the model's other,
    non-trainable variable collections (e.g. {"batch_stats": ...} of MCi's frozen BatchNorms; {} for ViTs);
    rng: uint32 [2] base key; skipped_steps: int32 [] updates skipped for non-finite loss or gradients so
    far; bad_streak: int32 [] how many of the latest steps in a row were skipped.

    Randomness in step s uses `jax.random.fold_in(rng, s)`, so a resumed run draws what an uninterrupted
    one would.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array
    skipped_steps: jax.Array
    bad_streak: jax.Array

    @classmethod
    def create(cls, variables: dict[str, Any], tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
        """The state at step 0 from a model's variables ({"params": ..., other collections ...})."""
        zero = jnp.int32(0)
        params = variables["params"]
        model_state = {name: value for name, value in variables.items() if name != "params"}
        return cls(
            step=zero,
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
            rng=rng,
            skipped_steps=zero,
            bad_streak=zero,
        )

    @property
    def variables(self) -> dict[str, Any]:
        """What `model.apply` takes: {"params": params, **model_state}."""
        return {"params": self.params, **self.model_state}

    def apply_gradients(
        self,
        grads: Any,
        loss: jax.Array,
        tx: optax.GradientTransformation,
        constrain: Callable[[Any], Any] = lambda params: params,
        model_state: Any = None,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update, or none if the loss or any gradient is not finite.

        A skipped step still advances `step` (its batch is consumed) and is counted, so one bad batch
        costs one update instead of the run. `constrain` projects the parameters after an update;
        `model_state`, when given, replaces the non-trainable variables (e.g. BatchNorm running averages
        from this step's batch), under the same condition as the update.

        Returns:
          (new state, {"train/skipped_steps", "train/bad_streak"} as int32 scalars).
        """
        finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

        new_model_state = self.model_state if model_state is None else model_state

        def update(operands: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
            params, opt_state, _ = operands
            updates, opt_state = tx.update(grads, opt_state, params)
            return constrain(optax.apply_updates(params, updates)), opt_state, new_model_state

        # A conditional rather than a select of old and new: selecting would read and write every
        # parameter and moment once more per step.
        params, opt_state, kept_model_state = jax.lax.cond(
            finite, update, lambda operands: operands, (self.params, self.opt_state, self.model_state)
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
        )
        return new_state, {"train/skipped_steps": skipped, "train/bad_streak": streak}
