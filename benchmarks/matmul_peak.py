"""The card's measured matmul rate: the denominator MFU should use on this machine.

  python benchmarks/matmul_peak.py --size 8192 --json peak.json
  python benchmarks/matmul_peak.py --dtype float8 --json peak_fp8.json

Times a [size, size] x [size, size] product (float32 accumulation, a bfloat16 result) with JAX on fresh
random inputs, rotating among several input pairs so repeated products do not run from cache. bfloat16
inputs, or float8_e4m3fn (`--dtype float8`) contracted as clipjax's FP8 products are (a . b^T, the layout
FP8 GEMMs read without a transpose; clipjax.models.fp8).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from report import emit, environment

INPUT_DTYPES = {"bfloat16": jnp.bfloat16, "float8": jnp.float8_e4m3fn}


def measure(size: int, repeats: int, dtype: str = "bfloat16", pairs: int = 4, rounds: int = 5) -> dict:
    """TFLOP/s of random [size, size] products of `dtype` inputs: the median over `rounds` of `repeats`
    queued products (queued, so the host's dispatch overlaps the device's work as in a training loop)."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * pairs)
    mats = [jax.random.normal(k, (size, size), jnp.bfloat16).astype(INPUT_DTYPES[dtype]) for k in keys]
    if dtype == "float8":
        contract = (((1,), (1,)), ((), ()))
        matmul = jax.jit(lambda a, b: jax.lax.dot_general(a, b, contract, preferred_element_type=jnp.bfloat16))
    else:
        matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    jax.block_until_ready(matmul(mats[0], mats[1]))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        outs = [matmul(mats[2 * (i % pairs)], mats[2 * (i % pairs) + 1]) for i in range(repeats)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - start) / repeats)
    median = sorted(times)[len(times) // 2]
    return {"size": size, "dtype": dtype, "median_ms": 1000 * median, "tflops_per_s": 2 * size**3 / median / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", choices=sorted(INPUT_DTYPES), default="bfloat16", help="the inputs' type")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    emit({**measure(args.size, args.repeats, args.dtype), **environment()}, args.json)


if __name__ == "__main__":
    main()
