"""Evaluating saved weights without training: zero-shot classification and retrieval of `config.init`.

The model comes from the weights: a converted checkpoint (`python -m clipjax.convert`) or a pretraining
workdir says which `config.model` and which image normalisation it needs; only `config.model.dtype` is
taken from the config. The metrics go to `<workdir>/metrics.jsonl` (and TensorBoard) as a row at step 0.
"""

from __future__ import annotations

import time
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.config import merge_onto_defaults
from clipjax.errors import ConfigError
from clipjax.evals.setup import ZEROSHOT_AND_RETRIEVAL_METRICS, make_evaluator
from clipjax.models import build_clip
from clipjax.parallel import state_shardings
from clipjax.tasks.spec import TaskSpec
from clipjax.train.loop import Metrics
from clipjax.train.metrics import MetricWriter
from clipjax.train.workdir import prepare_workdir, refuse_a_training_workdir, save_config
from clipjax.weights import load_variables, read_metadata


def abstract_variables(model: Any, config: ConfigDict, sharding_of: Any) -> dict[str, Any]:
    """The variables of `model` ({"params": ..., ...}) as ShapeDtypeStructs with shardings from `sharding_of(tree)`."""
    size = config.model.image_size
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            jax.numpy.zeros((1, size, size, 3)),
            jax.numpy.zeros((1, config.model.text.context_length), jax.numpy.int32),
        )
    )
    shardings = sharding_of(shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def run(config: ConfigDict, workdir: str, mesh: Mesh) -> Metrics:
    """Evaluates the weights in `config.init` as `config.eval` says; returns the metrics and timings."""
    start = time.perf_counter()
    saved = read_metadata(config.init)
    if "text" not in saved.get("towers", ["image", "text"]):
        raise ConfigError(
            f"config.init={config.init!r} holds an image tower only ({saved['source']}); zero-shot evaluation needs "
            "a text tower too: convert a whole CLIP (--source=open_clip), or use these weights for finetuning"
        )
    dtype = config.model.dtype
    config.model = merge_onto_defaults(ConfigDict({"model": saved["model"]})).model
    config.model.dtype = dtype
    config.data.normalize = saved["normalize"]
    refuse_a_training_workdir(workdir, TASK.name, TASK.title)
    prepare_workdir(workdir)
    if jax.process_index() == 0:
        save_config(config, workdir)
        print(f"evaluating {saved['source']} ({config.model.name}, {config.model.image_size} px)", flush=True)
    model = build_clip(config.model)
    target = abstract_variables(model, config, lambda tree: state_shardings(tree, mesh, config.fsdp_min_size))
    variables = load_variables(config.init, target)
    loaded = time.perf_counter()
    metrics = make_evaluator(model, mesh, config)(variables)
    writer = MetricWriter(workdir)
    try:
        writer.write(0, metrics)
    finally:
        writer.close()
    # No training step is compiled: loading the weights is reported as what it is (the evaluator's compile
    # falls in the rest of the wall time).
    return {**metrics, "steps": 0, "wall_time_s": time.perf_counter() - start, "time/load_s": loaded - start}


TASK = TaskSpec(
    name="evaluate",
    run=run,
    title="evaluation",
    init="required",
    metrics=ZEROSHOT_AND_RETRIEVAL_METRICS,
    trains=False,
)
