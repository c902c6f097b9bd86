"""The train state: everything a step reads and writes, as one pytree that shards and checkpoints whole."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params and opt_state: pytrees of float32 arrays; rng: uint32 [2] base key.

    Randomness in step s uses `jax.random.fold_in(rng, s)`, so a resumed run draws what an uninterrupted
    one would.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
