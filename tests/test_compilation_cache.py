"""config.compilation_cache_dir: a second process compiling the same program reads it from the cache."""

import json
import math
import os
import subprocess
import sys

import pytest

import clipjax.compilation_cache
from clipjax.main import main

PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from clipjax.compilation_cache import enable_compilation_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kwargs: events.append(name))
enable_compilation_cache(sys.argv[1])
value = float(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((4, 4))).sum())
print(json.dumps({"value": value, "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def run_program(cache_dir: str) -> dict:
    # Every compile is kept (JAX's default keeps only those over 1 s; these take milliseconds).
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, cache_dir], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
    cache = tmp_path / "nested" / "xla_cache"  # created on demand
    first = run_program(str(cache))
    assert first["hits"] == 0 and first["misses"] >= 1
    assert any(name.startswith("jit__lambda") for name in os.listdir(cache))
    second = run_program(str(cache))
    assert second["hits"] >= 1 and second["misses"] == 0
    # tanh(1) summed over 4 per entry of the 4 x 4 product: the cached program computes what was compiled.
    assert second["value"] == first["value"] == pytest.approx(4 * 4 * 4 * math.tanh(1.0), rel=1e-6)


def test_main_enables_the_cache_before_validating_or_compiling(repo_root, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(clipjax.compilation_cache, "enable_compilation_cache", seen.append)
    demo = os.path.join(repo_root, "configs", "demo.py")
    flags = [f"--config={demo}:smoke", f"--workdir={tmp_path / 'w'}", "--config.batch_size=100"]
    assert main([*flags, f"--config.compilation_cache_dir={tmp_path / 'cache'}"]) == 2  # an invalid batch
    assert main(flags) == 2
    assert seen == [str(tmp_path / "cache"), None]
