"""Runs train_step.py over the levers of the GPU throughput study, one process per variant, in one go.

  python benchmarks/train_step_sweep.py --out results/ --budget-s 480
  python benchmarks/train_step_sweep.py --out results/ --only cudnn_b512 mci2_b256   # in this order

Each variant runs in its own process (a compile failure or an out-of-memory leaves the rest standing) with
a time limit; variants run in the order listed, most informative first, and those that no longer fit the
budget are skipped and named. Writes <out>/<variant>.json and .log for each, <out>/sweep.json with them
all, and prints a table last. Meant for a lent accelerator where minutes count; it runs on the CPU too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VIT = ["--model", "vit_b16", "--peak-tflops", "795"]
# open_clip runs in the same process: JAX must not take 75% of the card's memory before PyTorch runs.
SHARE_CARD = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
MCI2 = ["--config", "configs/pretrain/mci_datacompdr.py:model=mci2", "--captions", "real", "--peak-tflops", "795"]

# (name, train_step.py arguments, extra environment, seconds it should need). The prediction for each is
# in benchmarks/README.md ("GPU throughput").
VARIANTS: list[tuple[str, list[str], dict[str, str], int]] = [
    ("peak_matmul", ["matmul_peak.py"], {}, 30),
    ("peak_matmul_fp8", ["matmul_peak.py", "--dtype", "float8"], {}, 30),
    # The best measured variant first, as this session's baseline; then the levers not measured yet.
    ("cudnn_b512", ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn"], {}, 90),
    # FP8 products (clipjax.models.fp8) with delayed scaling: the highest ceiling of the compiled H100 programs
    # (benchmarks/README.md); then with current scaling.
    (
        "cudnn_b512_fp8_all_delayed16",
        ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn", "--set", "model.fp8_matmuls=all"]
        + ["--set", "model.fp8_amax_history=16"],
        {},
        90,
    ),
    (
        "cudnn_b512_fp8_all",
        ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn", "--set", "model.fp8_matmuls=all"],
        {},
        90,
    ),
    (
        "cudnn_b512_fp8_switchback_cublas",
        ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn", "--set", "model.fp8_matmuls=switchback"],
        {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"},
        90,
    ),
    # Fits without rematerialisation since the GELU keeps only its input (59 GiB in the H100 program).
    ("cudnn_b768", ["train_step.py", *VIT, "--batch", "768", "--attention", "cudnn"], {}, 100),
    ("cudnn_b256", ["train_step.py", *VIT, "--batch", "256", "--attention", "cudnn"], {}, 90),
    (
        "cudnn_b1024_dots",
        ["train_step.py", *VIT, "--batch", "1024", "--attention", "cudnn", "--remat", "dots"],
        {},
        100,
    ),
    (
        "cudnn_b512_both",
        ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn", "--captions", "both"],
        {},
        90,
    ),
    ("cudnn_b512_scan", ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn", "--scan"], {}, 80),
    (
        "cudnn_b768_fp8_all",
        ["train_step.py", *VIT, "--batch", "768", "--attention", "cudnn", "--set", "model.fp8_matmuls=all"],
        {},
        100,
    ),
    (
        "cudnn_b512_gelu_tanh_cublaslt",
        ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn", "--set", "model.act=gelu_tanh"],
        {"XLA_FLAGS": "--xla_gpu_enable_cublaslt=true"},
        90,
    ),
    (
        "cudnn_b512_no_triton_gemm",
        ["train_step.py", *VIT, "--batch", "512", "--attention", "cudnn"],
        {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"},
        90,
    ),
    # MCi2's step did not finish compiling in 167 s: without autotuning first, then as XLA compiles it.
    (
        "mci2_b256_autotune0",
        ["train_step.py", *MCI2, "--batch", "256"],
        {"XLA_FLAGS": "--xla_gpu_autotune_level=0"},
        120,
    ),
    ("mci2_b256", ["train_step.py", *MCI2, "--batch", "256"], {}, 180),
    (
        "open_clip_compiled_b256",
        ["train_step.py", *VIT, "--batch", "256", "--compare-open-clip", "--open-clip-compile"],
        {},
        200,
    ),
    (
        "xla_b256",
        ["train_step.py", *VIT, "--batch", "256", "--attention", "xla", "--compare-open-clip"],
        SHARE_CARD,
        120,
    ),
]


def run_variant(name: str, argv: list[str], env: dict[str, str], out: str, limit_s: float, extra: list[str]) -> dict:
    """Runs one variant; returns its results, or {"error": ...} naming why there are none."""
    path = os.path.join(out, f"{name}.json")
    command = [sys.executable, os.path.join(HERE, argv[0]), *argv[1:], *extra, "--json", path]
    start = time.perf_counter()
    with open(os.path.join(out, f"{name}.log"), "w", encoding="utf-8") as log:
        try:
            code = subprocess.run(
                command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    results = {"wall_s": time.perf_counter() - start, "command": " ".join(command[1:]), "env": env}
    if code == 0 and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return {**json.load(f), **results}
    with open(os.path.join(out, f"{name}.log"), encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    # The exception's own line, not JAX's note about filtered frames that may follow it.
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    reason = (errors or lines or ["no output"])[-1][:300]
    return {**results, "error": f"exit {code}: {reason}"}


def table(results: dict[str, dict]) -> str:
    """A Markdown table of the sweep's headline numbers."""
    rows = [
        "| variant | pairs/s | step ms | MFU | XLA TFLOP/s | peak GB | cuDNN attn | compile s | open_clip pairs/s |"
    ]
    rows.append("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | {r['error']} | | | | | | | |")
            continue
        if "tflops_per_s" in r and "pairs_per_s" not in r:  # the matmul peak
            rows.append(f"| {name} | | {r['median_ms']:.2f} | | {r['tflops_per_s']:.0f} | | | | |")
            continue
        peak = r.get("peak_device_memory_bytes")
        theirs = r.get("open_clip", {})
        xla_tflops = r["tflops_per_s_per_device"] or 0  # none with scanned blocks (XLA counts a loop body once)
        rows.append(
            f"| {name} | {r['pairs_per_s']:.0f} | {r['step_ms']:.1f} | {r.get('mfu') or r.get('xla_mfu') or 0:.3f} "
            f"| {xla_tflops:.0f} | {peak / 1e9 if peak else 0:.1f} | {r['cudnn_attention_calls']} "
            f"| {r['compile_s']:.0f} | {theirs.get('pairs_per_s', 0):.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the results")
    parser.add_argument("--budget-s", type=float, default=600, help="stop starting variants after this long")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="arguments added to every run")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    names = [name for name, *_ in VARIANTS]
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(names)}")
    deadline = time.perf_counter() + args.budget_s
    results: dict[str, dict] = {}
    chosen = [v for name in args.only for v in VARIANTS if v[0] == name] if args.only else VARIANTS
    for name, argv, env, need_s in chosen:
        left = deadline - time.perf_counter()
        if left < need_s:
            results[name] = {"error": f"skipped: {left:.0f} s left of the budget, needs about {need_s}"}
            continue
        extra = args.extra if argv[0] == "train_step.py" else []
        results[name] = run_variant(name, argv, env, args.out, left, extra)
        print(f"{name}: {results[name].get('error') or 'ok'} ({results[name].get('wall_s', 0):.0f} s)", flush=True)
        with open(os.path.join(args.out, "sweep.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
