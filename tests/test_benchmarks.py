"""The benchmark scripts run on the CPU at tiny sizes and report what they promise (their numbers are not
asserted: speed goals live in benchmarks/README.md)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

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
    assert results["xla_flops_per_step_per_device"] > 0
    assert np.isfinite(results["loss"])


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
