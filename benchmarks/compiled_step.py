"""The real pretraining step compiled for a GPU this machine does not have: memory and kernel traffic.

  pip install "jax[cuda13]==$(python -c 'import jax; print(jax.__version__)')"   # XLA's GPU compiler, once
  python benchmarks/compiled_step.py --model vit_b16 --batch 512 --json h100_b512.json
  python benchmarks/compiled_step.py --model vit_b16 --batch 512 --remat dots --hlo h100_b512_dots.hlo
  python benchmarks/compiled_step.py --config tests/configs/tiny_pretrain.py --target cpu   # the CPU's own

XLA compiles the step for an H100 from a description of the card (no GPU, no driver: JAX runs on the CPU
and its CUDA plugin only compiles), with the shardings, fused loss and optimizer of a real run. Reported:
- memory: XLA's buffer assignment (arguments, outputs, aliased donations, temporaries) and whether the step
  fits on the card. cuDNN's workspaces are not in it (the kernels are chosen on a GPU);
- kernels by kind and the bytes each kind reads and writes, and the JAX ops that move the most bytes;
- a floor on the step time: model matmul FLOPs at the card's measured bf16 matmul peak (those in FP8 GEMMs,
  cuBLASLt's or Triton's with `model.fp8_matmuls`, at its FP8 peak) plus the bytes of the memory-bound kernels at its
  bandwidth (each kernel at its own roof, nothing overlapping).
Without a device XLA cannot autotune: matmul tilings are its defaults, so the measured step differs. (Tiny
float32 test models can find no default Triton tiling; `XLA_FLAGS=--xla_gpu_enable_triton_gemm=false` then.)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
from hlo_traffic import by_category, by_op, entry_kernels
from report import emit
from train_step import add_config_arguments, config_from_arguments, random_batch, run_description, sharded_step

from clipjax.models.flops import clip_train_flops_per_image
from clipjax.parallel import batch_sharding

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    """A card to compile for: XLA's description of it (GpuTargetConfig text proto; None: this host's own
    devices), its measured bf16 matmul peak, its FP8 matmul peak, memory bandwidth and memory."""

    description: str | None
    peak_tflops: float | None = None
    bandwidth_gb_s: float | None = None
    memory_bytes: int | None = None
    fp8_peak_tflops: float | None = None


# H100 SXM 80GB: 132 SMs at 1.98 GHz, compute capability 9.0, 50 MiB L2, 228 KiB shared memory per SM.
_H100 = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
runtime_version { major: 13 minor: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

# The bf16 matmul peak is the one measured on the card (benchmarks/README.md, matmul_peak.py), not the
# datasheet's. FP8 has not been measured on it: twice the bf16 figure, the datasheet's ratio (1,979 / 989
# dense TFLOP/s); `matmul_peak.py --dtype float8` measures it.
TARGETS = {
    "h100": Target(_H100, peak_tflops=795.0, bandwidth_gb_s=3352.32, memory_bytes=84929347584, fp8_peak_tflops=1590.0),
    "cpu": Target(None),
}

# Kernels whose time is their arithmetic, not their memory traffic (collectives are neither: left out).
COMPUTE_BOUND = ("matmul", "matmul:fp8", "attention", "convolution", "collective")


def target_devices(target: Target, count: int) -> list:
    """`count` devices of the target: described GPUs on one host (compile only), or this host's own."""
    if target.description is None:
        return jax.devices()[:count]
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(
            platform="cuda", topology=f"1x1x{count}", target_config=target.description
        )
    except Exception as e:  # the plugin missing, or JAX started on a GPU backend: both say little
        raise SystemExit(
            "compiling for a GPU needs JAX's CUDA plugin and JAX on the CPU: "
            f'pip install "jax[cuda13]=={jax.__version__}" ({type(e).__name__}: {str(e).splitlines()[0]})'
        ) from None
    return list(topology.devices)


def compile_step(config, target: Target, devices: int) -> tuple[dict, str]:
    """Compiles the run's step for `devices` of `target`; returns (report, the compiled program's HLO text)."""
    _, step, abstract_state, mesh = sharded_step(config, target_devices(target, devices))
    sharding = batch_sharding(mesh)
    batch = {
        key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
        for key, value in random_batch(config, np.random.default_rng(0)).items()
    }
    start = time.perf_counter()
    compiled = step.trace(abstract_state, batch).lower().compile()
    compile_s = time.perf_counter() - start
    hlo = compiled.as_text()

    memory = compiled.memory_analysis()
    # Donated state buffers are both an argument and an output: count them once.
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    kernels = entry_kernels(hlo)
    memory_bound_bytes = sum(k.bytes_moved for k in kernels if k.category not in COMPUTE_BOUND)
    fp8_flops = sum(k.flops for k in kernels if k.category == "matmul:fp8")
    categories = by_category(kernels)
    captions = 2 if config.data.captions == "both" else 1
    try:
        flops_per_device = clip_train_flops_per_image(config.model, captions) * config.batch_size / devices
    except ValueError:  # MCi towers have no formula
        flops_per_device = None

    report = {
        "compile_s": compile_s,
        "memory_gib": {
            "arguments": memory.argument_size_in_bytes / GiB,
            "outputs": memory.output_size_in_bytes / GiB,
            "aliased": memory.alias_size_in_bytes / GiB,
            "temporaries": memory.temp_size_in_bytes / GiB,
            "peak": peak / GiB,
        },
        "fits": None if target.memory_bytes is None else peak <= target.memory_bytes,
        "kernels": categories,
        "memory_bound_gb": memory_bound_bytes / 1e9,
        "top_ops": by_op(kernels, COMPUTE_BOUND)[:25],
        "model_flops_per_device": flops_per_device,
        "fp8_gemms": categories.get("matmul:fp8", {}).get("kernels", 0),
        "fp8_flops_per_device": fp8_flops,
    }
    if target.peak_tflops and flops_per_device:
        pairs = config.batch_size * captions
        report.update(step_floor(target, flops_per_device, memory_bound_bytes, pairs, fp8_flops))
    return report, hlo


def step_floor(
    target: Target, flops_per_device: float, memory_bound_bytes: int, pairs: int, fp8_flops: float = 0.0
) -> dict:
    """{"floor_ms": {"matmul", "memory_bound", "step"}, "ceiling_pairs_per_s"}: the model's matmuls at the
    card's matmul peak (`fp8_flops` of them at its FP8 peak) plus the memory-bound kernels' bytes at its
    bandwidth, one after the other."""
    if fp8_flops and not target.fp8_peak_tflops:
        raise ValueError("the program has FP8 GEMMs but the target names no FP8 matmul peak")
    fp8_ms = fp8_flops / (target.fp8_peak_tflops * 1e12) * 1e3 if fp8_flops else 0.0
    matmul_ms = (flops_per_device - fp8_flops) / (target.peak_tflops * 1e12) * 1e3 + fp8_ms
    memory_ms = memory_bound_bytes / (target.bandwidth_gb_s * 1e9) * 1e3
    return {
        "floor_ms": {"matmul": matmul_ms, "memory_bound": memory_ms, "step": matmul_ms + memory_ms},
        "ceiling_pairs_per_s": pairs / ((matmul_ms + memory_ms) / 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--target", choices=sorted(TARGETS), default="h100", help="the card to compile for")
    parser.add_argument("--devices", type=int, default=1, help="how many of them (one host)")
    parser.add_argument("--hlo", help="write the compiled program's HLO text here")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    # JAX runs on the CPU whatever the target: a GPU target is only compiled for.
    jax.config.update("jax_platforms", "cpu")
    target = TARGETS[args.target]
    if target.description is not None:
        import clipjax.models.layers

        # The attention resolver asks JAX's backend (the CPU here) whether cuDNN applies: answer for the target.
        clipjax.models.layers.accelerator_platform = lambda: "cuda"
    config, overrides = config_from_arguments(args)
    report, hlo = compile_step(config, target, args.devices)
    if args.hlo:
        with open(args.hlo, "w", encoding="utf-8") as f:
            f.write(hlo)
    report.update(run_description(args, config, overrides), target=args.target, devices=args.devices)
    if target.description is not None:  # run_description names the host's own devices
        report["device"] = f"{args.devices} x {args.target}, compiled for on the host's CPU"
    emit(report, args.json)


if __name__ == "__main__":
    main()
