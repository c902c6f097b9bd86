"""Throughput of the real pretraining step (sharded jit, loss, AdamW) on random data.

  python benchmarks/train_step.py --model vit_b16 --batch 256 --peak-tflops 795 --json results.json
  python benchmarks/train_step.py --model vit_b16 --batch 256 --compare-open-clip   # + open_clip, same card
  python benchmarks/train_step.py --config configs/demo.py --batch 128 --steps 20   # what the CPU demo runs

Reports pairs/s, step time, compile time, model FLOPs per step by formula (ViTs; clipjax/models/flops.py)
and as XLA counts them, achieved TFLOP/s and MFU against --peak-tflops, peak device memory where the
backend reports it, and how many cuDNN flash-attention calls the compiled step makes. The input pipeline
is left out (one device-resident batch is reused) so the number is the step's own. With --model the
paper's ViT-B/16 config is used with one caption per image (--captions both adds the synthetic caption's
loss). Results are printed and, with --json, written with the date and the machine.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict
from report import emit, environment

from clipjax.compilation_cache import enable_compilation_cache
from clipjax.config import load_config
from clipjax.models import build_clip
from clipjax.models.flops import clip_train_flops_per_image
from clipjax.parallel import batch_sharding, make_mesh, put_batch
from clipjax.tasks.pretrain import make_init_state, make_train_step
from clipjax.train.loop import shard_functions
from clipjax.train.optim import make_optimizer


def random_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """This host's share of a batch of random images and token ids (ending with the end token), and with
    distillation random teacher embeddings float32 [rows, sum(config.loss.teacher_dims)]."""
    rows = config.batch_size // jax.process_count()
    size, length = config.model.image_size, config.model.text.context_length
    text = rng.integers(1, 49406, (rows, length), dtype=np.int32)
    text[:, 0], text[:, -1] = 49406, 49407
    batch = {"image": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8), "text": text}
    captions = ("text", "text_synthetic") if config.data.captions == "both" else ("text",)
    if config.data.captions == "both":
        batch["text_synthetic"] = text.copy()
    if config.loss.distill_weight > 0:
        width = sum(config.loss.teacher_dims)
        for key in ("image", *captions):
            batch[f"teacher_{key}"] = rng.normal(size=(rows, width)).astype(np.float32)
    return batch


def sharded_step(config, devices=None) -> tuple[Callable, Callable, Any, Mesh]:
    """The run's jitted (init, step), the abstract state carrying its shardings, and the mesh over `devices`
    (default: every device), exactly as `python -m clipjax.main` builds them."""
    mesh = make_mesh(config.mesh, devices)
    model = build_clip(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    init, step, abstract_state = shard_functions(
        make_init_state(model, tx, config), make_train_step(model, tx, config, mesh), mesh, config
    )
    return init, step, abstract_state, mesh


def measure(config, steps: int, warmup: int) -> dict:
    """Compiles and times `steps` train steps after `warmup` untimed ones."""
    init, step, _, mesh = sharded_step(config)
    state = init(jax.random.PRNGKey(config.seed))
    batch = put_batch(random_batch(config, np.random.default_rng(0)), batch_sharding(mesh))

    start = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    # Counted on the program before XLA's passes: on GPUs the compiled program's matmuls and convolutions
    # are library calls (cuBLAS, cuDNN) that its cost analysis leaves out.
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older JAX returns one dict per device
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    # cuDNN's fused attention appears as custom calls named __cudnn$fmha... (forward and backward).
    cudnn_attention_calls = compiled.as_text().count('custom_call_target="__cudnn$fmha')

    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps

    memory = jax.devices()[0].memory_stats() or {}
    captions = 2 if config.data.captions == "both" else 1
    try:
        model_flops = clip_train_flops_per_image(config.model, captions) * config.batch_size
    except ValueError:  # MCi towers and conv stems have no formula: XLA's count stands in
        model_flops = None
    return {
        "pairs_per_s": config.batch_size * captions / step_s,
        "images_per_s": config.batch_size / step_s,
        "step_ms": 1000 * step_s,
        "compile_s": compile_s,
        # Model FLOPs of one global step by formula (matmuls; 3x forward), or None.
        "model_flops_per_step": model_flops,
        "model_tflops_per_s_per_device": model_flops / step_s / 1e12 / jax.device_count() if model_flops else None,
        # XLA's count for the global step (every op, rematerialised work not included). With scanned blocks
        # XLA counts a loop's body once, not once per block, so there is no count then.
        "xla_flops_per_step": None if config.model.scan else flops,
        "tflops_per_s_per_device": None if config.model.scan else flops / step_s / 1e12 / jax.device_count(),
        "cudnn_attention_calls": cudnn_attention_calls,
        "peak_device_memory_bytes": memory.get("peak_bytes_in_use"),
        "loss": float(metrics["train/loss"]),
    }


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the run's config (read back by `config_from_arguments`)."""
    parser.add_argument("--config", default="configs/pretrain/vit_b16_datacompdr.py", help="config file[:ARGS]")
    parser.add_argument("--model", help="config.model.name, e.g. vit_b16")
    parser.add_argument("--batch", type=int, help="global batch size")
    parser.add_argument("--captions", choices=("real", "both"), help="captions per image: one, or real + synthetic")
    parser.add_argument("--attention", choices=("auto", "xla", "cudnn"), help="config.model.attention")
    parser.add_argument("--remat", choices=("none", "dots", "full"), help="config.model.remat")
    parser.add_argument("--scan", action="store_true", help="config.model.scan: nn.scan over each tower's blocks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")


def config_from_arguments(args: argparse.Namespace) -> tuple[ConfigDict, list[tuple[str, str]]]:
    """(the config, the overrides applied to the config file). With --model, one caption per image unless
    --captions says otherwise."""
    overrides = [tuple(item.split("=", 1)) for item in args.set]
    if args.model:
        overrides += [("model.name", args.model), ("data.captions", args.captions or "real")]
    elif args.captions:
        overrides.append(("data.captions", args.captions))
    if args.scan:
        overrides.append(("model.scan", "True"))
    for key, value in (("batch_size", args.batch), ("model.attention", args.attention), ("model.remat", args.remat)):
        if value:
            overrides.append((key, str(value)))
    return load_config(args.config, overrides), overrides


def run_description(args: argparse.Namespace, config: ConfigDict, overrides: list[tuple[str, str]]) -> dict:
    """What the numbers were measured on and with: the machine, date, config file, overrides and the choices
    that move speed (model, batch, dtype, attention, remat, scan, captions, XLA flags)."""
    return dict(
        **environment(),
        config=args.config,
        overrides=dict(overrides),
        model=config.model.name,
        batch_size=config.batch_size,
        dtype=config.model.dtype,
        attention=config.model.attention,
        remat=config.model.remat,
        scan=config.model.scan,
        captions=config.data.captions,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--peak-tflops", type=float, help="the card's peak, to report MFU (e.g. 795 for bf16 on H100)")
    parser.add_argument("--compare-open-clip", action="store_true", help="also time open_clip's step (PyTorch)")
    parser.add_argument("--open-clip-compile", action="store_true", help="torch.compile open_clip's model")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    config, overrides = config_from_arguments(args)
    enable_compilation_cache(config.compilation_cache_dir)  # --set compilation_cache_dir=DIR
    theirs = None
    if args.compare_open_clip:  # first, so that PyTorch's memory is released before JAX's step runs
        from open_clip_step import measure_open_clip

        theirs = measure_open_clip(config, args.steps, args.warmup, compile_model=args.open_clip_compile)
    results = measure(config, args.steps, args.warmup)
    if args.peak_tflops:
        if results["tflops_per_s_per_device"]:
            results["xla_mfu"] = results["tflops_per_s_per_device"] / args.peak_tflops
        if results["model_tflops_per_s_per_device"]:
            results["mfu"] = results["model_tflops_per_s_per_device"] / args.peak_tflops
    if theirs:
        results["open_clip"] = theirs
        results["speedup_over_open_clip"] = results["images_per_s"] / theirs["pairs_per_s"]
    results.update(run_description(args, config, overrides))
    emit(results, args.json)


if __name__ == "__main__":
    main()
