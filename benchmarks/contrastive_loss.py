"""Forward + backward time and peak memory of the naive and fused CLIP losses.

  python benchmarks/contrastive_loss.py --batch 16384 --dim 128 --json cpu_16k.json
  python benchmarks/contrastive_loss.py --sweep --dims 512 768 --max-batch 262144 --json sweep.json

Writes {"naive": {"time_s": ..., "peak_bytes": ...}, "fused": {...}, ...} for one batch size, or a list of
such rows for --sweep (fused only from 4,096 up to --max-batch, doubling; naive alongside while it fits).
Peak memory is the device allocator's peak where the backend reports one (GPU, TPU), otherwise XLA's
compiled footprint (arguments + outputs + temporaries), which is what the CPU gives. A variant whose
footprint exceeds the free memory is reported as "out_of_memory" instead of run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from report import emit, environment

from clipjax.losses import clip_loss


def free_bytes(device: jax.Device) -> int:
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def measure(impl: str, batch: int, dim: int, block: int, repeats: int, dtype: str) -> dict:
    """Times jit(value_and_grad(clip_loss)) over (image, text, scale) on random unit embeddings."""
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((batch, dim), dtype=np.float32) for _ in range(2))
    x, y = (jnp.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype) for v in (x, y))
    scale = jnp.float32(14.3)
    fn = jax.jit(jax.value_and_grad(lambda a, b, s: clip_loss(a, b, s, impl=impl, block_size=block), argnums=(0, 1, 2)))
    compiled = fn.lower(x, y, scale).compile()
    memory = compiled.memory_analysis()
    footprint = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    if footprint > 0.9 * free_bytes(device):
        return {"out_of_memory": True, "needs_bytes": footprint}
    jax.block_until_ready(compiled(x, y, scale))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value, grads = compiled(x, y, scale)
        jax.block_until_ready((value, grads))
        times.append(time.perf_counter() - start)
    stats = device.memory_stats() or {}
    return {
        "time_s": statistics.median(times),
        "peak_bytes": stats.get("peak_bytes_in_use", footprint),
        "temp_bytes": memory.temp_size_in_bytes,
        "loss": float(value),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=1024, help="tile side of the fused loss")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="fused from batch 4096 to --max-batch")
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--max-batch", type=int, default=262144)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    header = {
        **environment(),
        "block": args.block,
        "dtype": args.dtype,
    }
    if args.sweep:
        rows = []
        for dim in args.dims:
            batch, naive_fits = 4096, True
            while batch <= args.max_batch:
                row = {"batch": batch, "dim": dim}
                row["fused"] = measure("fused", batch, dim, args.block, args.repeats, args.dtype)
                if naive_fits:
                    row["naive"] = measure("naive", batch, dim, args.block, args.repeats, args.dtype)
                    naive_fits = not row["naive"].get("out_of_memory")
                print(json.dumps(row), flush=True)
                rows.append(row)
                batch *= 2
        results = {**header, "rows": rows}
    else:
        results = {**header, "batch": args.batch, "dim": args.dim}
        for impl in ("naive", "fused"):
            results[impl] = measure(impl, args.batch, args.dim, args.block, args.repeats, args.dtype)
    emit(results, args.json)


if __name__ == "__main__":
    main()
