"""The benchmark scripts run on the CPU at tiny sizes and report what they promise (their numbers are not
asserted: speed goals live in benchmarks/README.md)."""

import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.config import load_config
from clipjax.models import build_clip
from clipjax.models.flops import clip_train_flops_per_image
from tests.helpers import tiny_config


@pytest.fixture
def load_benchmark(repo_root, monkeypatch):
    # Scripts import their sibling `report` module, as `python benchmarks/x.py` allows.
    monkeypatch.syspath_prepend(os.path.join(repo_root, "benchmarks"))

    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(repo_root, "benchmarks", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


def test_train_step_benchmark_reports_and_times_open_clip_on_the_same_model(
    load_benchmark, repo_root, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("open_clip")
    out = tmp_path / "step.json"
    argv = ["train_step.py", "--config", "tests/configs/tiny_pretrain.py", "--batch", "8", "--steps", "1"]
    argv += ["--warmup", "1", "--peak-tflops", "1", "--set", "mesh.fsdp=2", "--compare-open-clip", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("train_step").main()
    results = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == results
    assert results["pairs_per_s"] > 0 and results["step_ms"] > 0 and results["compile_s"] > 0
    assert results["pairs_per_s"] == pytest.approx(results["images_per_s"])  # one caption per image
    assert results["xla_flops_per_step"] > 0
    assert results["cudnn_attention_calls"] == 0  # the CPU runs XLA's attention
    assert np.isfinite(results["loss"])
    # MFU's numerator: 3x the forward formula per image, over the global batch.
    config = load_config(os.path.join(repo_root, "tests", "configs", "tiny_pretrain.py"))
    assert results["model_flops_per_step"] == pytest.approx(8 * clip_train_flops_per_image(config.model))
    assert results["mfu"] == pytest.approx(results["model_tflops_per_s_per_device"])  # peak of 1 TFLOP/s
    assert results["attention"] == "auto" and results["batch_size"] == 8
    theirs = results["open_clip"]
    assert theirs["pairs_per_s"] > 0 and np.isfinite(theirs["loss"]) and theirs["compiled"] is False
    assert results["speedup_over_open_clip"] == pytest.approx(results["images_per_s"] / theirs["pairs_per_s"])


def test_random_batches_carry_teacher_embeddings_when_the_run_distils(load_benchmark):
    config = tiny_config({"data": -1, "fsdp": 1})
    config.data.captions = "both"
    config.loss.update(distill_weight=0.75, teacher_dims=(4, 6))
    batch = load_benchmark("train_step").random_batch(config, np.random.default_rng(0))
    for key in ("teacher_image", "teacher_text", "teacher_text_synthetic"):
        assert batch[key].shape == (16, 10) and batch[key].dtype == np.float32
    config.loss.distill_weight = 0.0
    assert not any(
        key.startswith("teacher") for key in load_benchmark("train_step").random_batch(config, np.random.default_rng(0))
    )


def test_open_clip_twin_has_clipjax_parameter_count(load_benchmark):
    pytest.importorskip("open_clip")
    config = tiny_config({"data": -1, "fsdp": 1})
    theirs = load_benchmark("open_clip_step").build_open_clip(config.model, "cpu")
    ours = jax.eval_shape(
        build_clip(config.model).init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32)
    )
    # Same towers: only the parameter layout differs (open_clip's biases on the qkv, attention out and
    # projections are also clipjax's; its patch embedding has no bias, as clipjax's).
    assert sum(p.numel() for p in theirs.parameters()) == sum(x.size for x in jax.tree.leaves(ours))


def test_sweep_runs_variants_in_the_order_asked_and_skips_what_exceeds_the_budget(
    load_benchmark, tmp_path, monkeypatch, capsys
):
    sweep = load_benchmark("train_step_sweep")
    monkeypatch.setattr(
        sys, "argv", ["sweep", "--out", str(tmp_path), "--budget-s", "0", "--only", "mci2_b256", "xla_b256"]
    )
    sweep.main()
    results = json.loads((tmp_path / "sweep.json").read_text()) if (tmp_path / "sweep.json").exists() else None
    table = capsys.readouterr().out.splitlines()
    assert results is None  # nothing ran, so nothing was written
    assert [row.split("|")[1].strip() for row in table[2:]] == ["mci2_b256", "xla_b256"]
    assert all("skipped" in row for row in table[2:])
    monkeypatch.setattr(sys, "argv", ["sweep", "--out", str(tmp_path), "--only", "no_such_variant"])
    with pytest.raises(SystemExit):
        sweep.main()


def test_sweep_table_reads_results_and_errors(load_benchmark):
    sweep = load_benchmark("train_step_sweep")
    row = {
        "pairs_per_s": 2611.2,
        "step_ms": 196.1,
        "mfu": 0.405,
        "tflops_per_s_per_device": 400.0,
        "peak_device_memory_bytes": 59.4e9,
        "cudnn_attention_calls": 48,
        "compile_s": 45.0,
        "open_clip": {"pairs_per_s": 1681.0},
    }
    table = sweep.table({"a": row, "b": {"error": "exit 1: NotImplementedError: x"}}).splitlines()
    assert table[2] == "| a | 2611 | 196.1 | 0.405 | 400 | 59.4 | 48 | 45 | 1681 |"
    assert table[3].startswith("| b | exit 1: NotImplementedError: x |")


@pytest.mark.parametrize("dtype", ["bfloat16", "float8"])
def test_matmul_peak_times_products_of_either_input_type(load_benchmark, dtype):
    results = load_benchmark("matmul_peak").measure(32, repeats=2, dtype=dtype, pairs=2, rounds=1)
    assert results["dtype"] == dtype and results["size"] == 32
    assert results["tflops_per_s"] == pytest.approx(2 * 32**3 / (results["median_ms"] / 1e3) / 1e12)


def test_input_pipeline_benchmark_writes_both_rates(load_benchmark, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pipeline.json"
    argv = ["input_pipeline.py", "--samples", "12", "--repeats", "1", "--size", "64", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("input_pipeline").main()
    results = json.loads(out.read_text())
    assert results["pipeline_per_core"] > 0 and results["decode_per_core"] > 0
    assert results["ratio"] == pytest.approx(results["pipeline_per_core"] / results["decode_per_core"], rel=1e-2)
    assert results["samples"] == 12 and {"date", "host", "device"} <= set(results)
    assert json.loads(capsys.readouterr().out) == results


# A program in the form XLA's GPU compiler prints: a Triton GEMM, two GELU-like loop fusions of the same op in
# blocks 3 and 11, cuDNN attention (a tuple with its workspace), an all-reduce; parameters, tuples and
# get-tuple-elements launch no kernel.
GPU_HLO = (
    "HloModule jit_step\n"
    "\n"
    "%fused (p0: f32[4,8]) -> f32[4,8] {\n"
    "  %p0 = f32[4,8]{1,0} parameter(0)\n"
    "  ROOT %add = f32[4,8]{1,0} add(f32[4,8]{1,0} %p0, f32[4,8]{1,0} %p0)\n"
    "}\n"
    "ENTRY %main.9 (a: bf16[4,8], b: bf16[8,16]) -> (f32[4,8], bf16[4,16]) {\n"
    '  %a = bf16[4,8]{1,0} parameter(0), metadata={op_name="state.a"}\n'
    "  %b = bf16[8,16]{1,0} parameter(1)\n"
    "  %gemm_fusion = bf16[4,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused, "
    'metadata={op_name="jit(step)/image/encoder/block_3/mlp/fc1/dot_general"}, '
    'backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}\n'
    "  %loop_1 = f32[4,8]{1,0} fusion(%a), kind=kLoop, calls=%fused, "
    'metadata={op_name="jit(step)/image/encoder/block_3/mlp/mul"}\n'
    "  %loop_2 = f32[4,8]{1,0} fusion(%loop_1), kind=kLoop, calls=%fused, "
    'metadata={op_name="jit(step)/image/encoder/block_11/mlp/mul"}\n'
    "  %fmha = (bf16[4,16]{1,0}, u8[0]{0}) custom-call(%gemm_fusion, %gemm_fusion, %gemm_fusion), "
    'custom_call_target="__cudnn$fmhaSoftmax"\n'
    "  %gte = bf16[4,16]{1,0} get-tuple-element(%fmha), index=0\n"
    "  %ar = f32[4,8]{1,0} all-reduce(%loop_2), replica_groups={}, to_apply=%fused\n"
    "  ROOT %t = (f32[4,8]{1,0}, bf16[4,16]{1,0}) tuple(%ar, %gte)\n"
    "}\n"
)


def test_hlo_traffic_counts_each_kernels_kind_and_bytes(load_benchmark):
    traffic = load_benchmark("hlo_traffic")
    assert traffic.shape_bytes("(bf16[2,3]{1,0}, pred[4], f8e4m3fn[8], s32[])") == 12 + 4 + 8 + 4
    kernels = traffic.entry_kernels(GPU_HLO)
    assert [(k.name, k.category, k.bytes_out, k.bytes_in) for k in kernels] == [
        ("gemm_fusion", "matmul", 128, 64 + 256),
        ("loop_1", "fusion:kLoop", 128, 64),
        ("loop_2", "fusion:kLoop", 128, 128),
        ("fmha", "attention", 128, 3 * 128),
        ("ar", "collective", 128, 128),
    ]
    assert traffic.by_category(kernels)["fusion:kLoop"] == {"kernels": 2, "gb": 448 / 1e9}
    ops = traffic.by_op(kernels, ("matmul", "attention", "collective"))
    assert ops == [{"op": "image/encoder/block_*/mlp/mul", "kernels": 2, "gb": 448 / 1e9}]
    # MCi's blocks fold within their stage; the stages stay apart.
    mci = [
        traffic.Kernel(f"k{i}", "fusion:kLoop", 10, 10, f"jit(step)/image/stages_{stage}/blocks_{block}/mlp/add")
        for i, (stage, block) in enumerate([(1, 0), (1, 2), (2, 0)])
    ]
    assert [(op["op"], op["kernels"]) for op in traffic.by_op(mci)] == [
        ("image/stages_1/blocks_*/mlp/add", 2),
        ("image/stages_2/blocks_*/mlp/add", 1),
    ]


# FP8 products as XLA's GPU compiler prints them: a Triton GEMM fusion over two FP8 parameters (its scales
# fused in), cuBLASLt's FP8 GEMM (a tuple with its workspace), and a bf16 cuBLAS GEMM contracting two axes.
FP8_HLO = (
    "HloModule jit_step\n"
    "\n"
    "%gemm_fusion_dot.1_computation (parameter_0: f8e4m3fn[64,32], parameter_1: f8e4m3fn[16,32], "
    "parameter_2: bf16[]) -> bf16[64,16] {\n"
    "  %parameter_0 = f8e4m3fn[64,32]{1,0} parameter(0)\n"
    "  %parameter_1 = f8e4m3fn[16,32]{1,0} parameter(1)\n"
    "  %dot.0 = bf16[64,16]{1,0} dot(%parameter_0, %parameter_1), lhs_contracting_dims={1}, "
    "rhs_contracting_dims={1}\n"
    "  %parameter_2 = bf16[] parameter(2)\n"
    "  %broadcast = bf16[64,16]{1,0} broadcast(%parameter_2), dimensions={}\n"
    "  ROOT %multiply = bf16[64,16]{1,0} multiply(%dot.0, %broadcast)\n"
    "}\n"
    "ENTRY %main (a: f8e4m3fn[64,32], b: f8e4m3fn[16,32], s: bf16[], c: bf16[64,4,8], d: bf16[4,8,16]) -> "
    "bf16[64,16] {\n"
    "  %a = f8e4m3fn[64,32]{1,0} parameter(0)\n"
    "  %b = f8e4m3fn[16,32]{1,0} parameter(1)\n"
    "  %s = bf16[] parameter(2)\n"
    "  %c = bf16[64,4,8]{2,1,0} parameter(3)\n"
    "  %d = bf16[4,8,16]{2,1,0} parameter(4)\n"
    "  %triton = bf16[64,16]{1,0} fusion(%a, %b, %s), kind=kCustom, calls=%gemm_fusion_dot.1_computation, "
    'backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}\n'
    "  %f8 = (bf16[64,16]{1,0}, s8[1024]{0}) custom-call(%a, %b, %s, %s), "
    'custom_call_target="__cublas$lt$matmul$f8", backend_config={"gemm_backend_config":{"dot_dimension_numbers":'
    '{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["1"],"lhs_batch_dimensions":[]}}}\n'
    "  %wide = (bf16[64,16]{1,0}, s8[1024]{0}) custom-call(%c, %d), "
    'custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":'
    '{"lhs_contracting_dimensions":["1","2"],"rhs_contracting_dimensions":["0","1"],"lhs_batch_dimensions":[]}}}\n'
    "  ROOT %gte = bf16[64,16]{1,0} get-tuple-element(%f8), index=0\n"
    "}\n"
)


def test_hlo_traffic_finds_fp8_gemms_and_counts_their_flops(load_benchmark):
    kernels = load_benchmark("hlo_traffic").entry_kernels(FP8_HLO)
    assert [(k.name, k.category, k.flops) for k in kernels] == [
        ("triton", "matmul:fp8", 2 * 64 * 16 * 32),
        ("f8", "matmul:fp8", 2 * 64 * 16 * 32),
        ("wide", "matmul", 2 * 64 * 16 * 32),  # two contracted axes, 4 x 8
    ]
    assert kernels[1].bytes_in == 2048 + 512 + 2 + 2 and kernels[1].bytes_out == 2048 + 1024


def test_the_floor_times_fp8_products_at_the_fp8_peak(load_benchmark):
    compiled_step = load_benchmark("compiled_step")
    card = compiled_step.Target(None, peak_tflops=1.0, bandwidth_gb_s=2.0, fp8_peak_tflops=4.0)
    floor = compiled_step.step_floor(card, 10e12, 4e9, pairs=100, fp8_flops=8e12)
    assert floor["floor_ms"] == pytest.approx({"matmul": 2e3 + 2e3, "memory_bound": 2e3, "step": 6e3})
    assert floor["ceiling_pairs_per_s"] == pytest.approx(100 / 6.0)
    with pytest.raises(ValueError, match="FP8 matmul peak"):
        compiled_step.step_floor(compiled_step.Target(None, peak_tflops=1.0, bandwidth_gb_s=2.0), 1e12, 0, 1, 1e12)


def test_hlo_traffic_of_a_program_compiled_here(load_benchmark):
    """One elementwise kernel over a [256, 128] float32 array reads and writes it once: 2 x 131,072 bytes."""
    x = jnp.ones((256, 128), jnp.float32)
    hlo = jax.jit(lambda x: jnp.exp(x) * 2.0 + 1.0).lower(x).compile().as_text()
    kernels = load_benchmark("hlo_traffic").entry_kernels(hlo)
    assert len(kernels) == 1 and (kernels[0].bytes_in, kernels[0].bytes_out) == (131_072, 131_072)


def test_compiled_step_reports_memory_kernels_and_the_floor(load_benchmark):
    compiled_step = load_benchmark("compiled_step")
    config = tiny_config({"data": -1, "fsdp": 2})
    report, hlo = compiled_step.compile_step(config, compiled_step.TARGETS["cpu"], devices=4)
    memory = report["memory_gib"]
    assert memory["peak"] == pytest.approx(
        memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
    )
    assert memory["aliased"] > 0.9 * memory["outputs"]  # the donated state is updated in place
    kernels = report["kernels"]
    assert kernels["matmul"]["kernels"] > 0 and kernels["collective"]["kernels"] > 0  # fsdp gathers the weights
    assert report["fits"] is None and "floor_ms" not in report  # no card described
    assert any(op["op"].startswith("jvp(CLIP)/CLIP.encode_image/image/encoder/block_*/") for op in report["top_ops"])
    # The floor: the model's matmuls at the card's peak, then the memory-bound bytes at its bandwidth.
    card = compiled_step.Target(None, peak_tflops=2.0, bandwidth_gb_s=4.0)
    floor = compiled_step.step_floor(card, report["model_flops_per_device"], report["memory_bound_gb"] * 1e9, 16)
    matmul_ms = 16 * clip_train_flops_per_image(config.model) / 4 / 2e12 * 1e3
    assert report["model_flops_per_device"] == pytest.approx(16 * clip_train_flops_per_image(config.model) / 4)
    assert floor["floor_ms"]["matmul"] == pytest.approx(matmul_ms)
    assert floor["floor_ms"]["memory_bound"] == pytest.approx(report["memory_bound_gb"] / 4.0 * 1e3)
    assert floor["ceiling_pairs_per_s"] == pytest.approx(16 / (sum(floor["floor_ms"].values()) / 2 / 1e3))
    assert "ENTRY" in hlo
