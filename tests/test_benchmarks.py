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
        spec.loader.exec_module(module)
        return module

    return load


def test_train_step_benchmark_runs_and_reports(load_benchmark):
    config = tiny_config({"data": -1, "fsdp": 2})
    results = load_benchmark("train_step").measure(config, steps=2, warmup=1)
    assert results["pairs_per_s"] > 0 and results["step_ms"] > 0 and results["compile_s"] > 0
    assert results["pairs_per_s"] == pytest.approx(results["images_per_s"])  # one caption per image
    assert results["xla_flops_per_step"] > 0
    assert results["cudnn_attention_calls"] == 0  # the CPU runs XLA's attention
    assert np.isfinite(results["loss"])
    # MFU's numerator: 3x the forward formula per image, over the global batch.
    assert results["model_flops_per_step"] == pytest.approx(16 * clip_train_flops_per_image(config.model))


def test_train_step_benchmark_times_open_clip_on_the_same_model(load_benchmark, tmp_path, monkeypatch, capsys):
    pytest.importorskip("open_clip")
    out = tmp_path / "step.json"
    argv = ["train_step.py", "--config", "tests/configs/tiny_pretrain.py", "--batch", "8", "--steps", "1"]
    argv += ["--warmup", "1", "--peak-tflops", "1", "--compare-open-clip", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("train_step").main()
    results = json.loads(out.read_text())
    theirs = results["open_clip"]
    assert theirs["pairs_per_s"] > 0 and np.isfinite(theirs["loss"]) and theirs["compiled"] is False
    assert results["speedup_over_open_clip"] == pytest.approx(results["images_per_s"] / theirs["pairs_per_s"])
    assert results["mfu"] == pytest.approx(results["model_tflops_per_s_per_device"])  # peak of 1 TFLOP/s
    assert results["attention"] == "auto" and results["batch_size"] == 8
    assert json.loads(capsys.readouterr().out) == results


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
