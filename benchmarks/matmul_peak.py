"""The card's measured bf16 matmul rate: the denominator MFU should use on this machine.

  python benchmarks/matmul_peak.py --size 8192 --json peak.json

Times a [size, size] x [size, size] bfloat16 product (float32 accumulation) with JAX on fresh random
inputs, rotating among several input pairs so repeated products do not run from cache.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from report import emit, environment


def measure(size: int, repeats: int, pairs: int = 4, rounds: int = 5) -> dict:
    """TFLOP/s of random bf16 [size, size] products: the median over `rounds` of `repeats` queued products
    (queued, so the host's dispatch overlaps the device's work as in a training loop)."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * pairs)
    mats = [jax.random.normal(k, (size, size), jnp.bfloat16) for k in keys]
    matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    jax.block_until_ready(matmul(mats[0], mats[1]))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        outs = [matmul(mats[2 * (i % pairs)], mats[2 * (i % pairs) + 1]) for i in range(repeats)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - start) / repeats)
    median = sorted(times)[len(times) // 2]
    return {"size": size, "median_ms": 1000 * median, "tflops_per_s": 2 * size**3 / median / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    emit({**measure(args.size, args.repeats), **environment()}, args.json)


if __name__ == "__main__":
    main()
