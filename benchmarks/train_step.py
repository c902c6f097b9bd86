"""Throughput of the real pretraining step (sharded jit, loss, AdamW) on random data.

  python benchmarks/train_step.py --model vit_b16 --batch 256 --json results.json
  python benchmarks/train_step.py --config configs/demo.py --batch 128 --steps 20   # what the CPU demo runs

Reports pairs/s, step time, compile time, the FLOPs XLA counts for one step, achieved TFLOP/s, MFU when
--peak-tflops is given, and peak device memory where the backend reports it. The input pipeline is left
out (one device-resident batch is reused) so the number is the step's own. Results are printed and, with
--json, written with the date and the machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from report import emit, environment

from clipjax.config import load_config
from clipjax.models import build_clip
from clipjax.parallel import batch_sharding, make_mesh, put_batch
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.loop import shard_functions
from clipjax.train.optim import make_optimizer


def random_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """This host's share of a batch of random images and token ids (ending with the end token)."""
    rows = config.batch_size // jax.process_count()
    size, length = config.model.image_size, config.model.text.context_length
    text = rng.integers(1, 49406, (rows, length), dtype=np.int32)
    text[:, 0], text[:, -1] = 49406, 49407
    batch = {"image": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8), "text": text}
    if config.data.captions == "both":
        batch["text_synthetic"] = text.copy()
    return batch


def measure(config, steps: int, warmup: int) -> dict:
    """Compiles and times `steps` train steps after `warmup` untimed ones."""
    mesh = make_mesh(config.mesh)
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    init, step, _ = shard_functions(
        make_init_state(model, tx, config), make_train_step(model, tx, config, mesh), mesh, config
    )
    state = init(jax.random.PRNGKey(config.seed))
    batch = put_batch(random_batch(config, np.random.default_rng(0)), batch_sharding(mesh))

    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older JAX returns one dict per device
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps

    memory = jax.devices()[0].memory_stats() or {}
    return {
        "pairs_per_s": config.batch_size / step_s,
        "step_ms": 1000 * step_s,
        "compile_s": compile_s,
        # XLA's count for the compiled program; on several devices it is per device.
        "xla_flops_per_step_per_device": flops,
        "tflops_per_s_per_device": flops / step_s / 1e12,
        "peak_device_memory_bytes": memory.get("peak_bytes_in_use"),
        "loss": float(metrics["train/loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pretrain/vit_b16_datacompdr.py", help="config file[:ARGS]")
    parser.add_argument("--model", help="config.model.name, e.g. vit_b16")
    parser.add_argument("--batch", type=int, help="global batch size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--peak-tflops", type=float, help="the card's peak, to report MFU (e.g. 795 for bf16 on H100)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    overrides = [tuple(item.split("=", 1)) for item in args.set]
    if args.model:
        overrides.append(("model.name", args.model))
    if args.batch:
        overrides.append(("batch_size", str(args.batch)))
    config = load_config(args.config, overrides)
    results = measure(config, args.steps, args.warmup)
    if args.peak_tflops:
        results["mfu"] = results["tflops_per_s_per_device"] / args.peak_tflops
    results.update(
        **environment(),
        config=args.config,
        overrides=dict(overrides),
        model=config.model.name,
        batch_size=config.batch_size,
        dtype=config.model.dtype,
    )
    emit(results, args.json)


if __name__ == "__main__":
    main()
