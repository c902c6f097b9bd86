"""The one train loop every task runs: init or resume, step, log, evaluate, checkpoint.

A task hands the loop a `Task`: how to build the initial state, the (unjitted) train step, its dataset
and its evaluator. The loop owns the jit with explicit shardings, buffer donation, the workdir layout
(config.json, metrics.jsonl, TensorBoard events, checkpoints/) and the progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import grain
import jax
import numpy as np
import tqdm
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax.parallel import batch_sharding, put_batch, replicated, state_shardings
from clipjax.train.checkpoint import Checkpointer
from clipjax.train.metrics import MetricWriter
from clipjax.train.state import TrainState

Metrics = dict[str, Any]


@dataclasses.dataclass
class Task:
    """What a task gives the loop.

    init_state: rng key (uint32 [2]) -> TrainState; jitted by the loop so parameters are born sharded.
    train_step: (TrainState, batch dict of global arrays) -> (TrainState, scalar metrics); jitted by the
      loop with the state donated.
    dataset: yields this host's numpy batches; its iterator state is checkpointed.
    evaluate: params -> metrics (e.g. {"eval/zeroshot_top1": 0.6}); run every eval_every steps and at
      the end.
    examples_per_step: global examples per step, for the throughput metric named `throughput_key`.
    """

    init_state: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]
    dataset: grain.IterDataset
    evaluate: Callable[[Any], Metrics]
    examples_per_step: int
    throughput_key: str = "train/pairs_per_s"


def save_config(config: ConfigDict, workdir: str) -> None:
    """Writes config.json; a different config.json from an earlier run is kept under a numbered name."""
    path = os.path.join(workdir, "config.json")
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
        n = 1
        while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
            n += 1
        os.replace(path, os.path.join(workdir, f"config.{n}.json"))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def shard_functions(
    init_state: Callable[[jax.Array], TrainState],
    train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]],
    mesh: Mesh,
    config: ConfigDict,
) -> tuple[Callable, Callable, Any]:
    """Jits a task's init and step with explicit shardings.

    Returns:
      (init: rng -> sharded TrainState, step: (state, batch) -> (state, metrics) with the state donated,
       abstract state: TrainState of ShapeDtypeStructs carrying the shardings, a restore target).
    """
    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    shardings = state_shardings(abstract, mesh, config.fsdp_min_size)
    init = jax.jit(init_state, out_shardings=shardings)
    step = jax.jit(
        train_step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return init, step, target


def train(config: ConfigDict, workdir: str, mesh: Mesh, task: Task) -> Metrics:
    """Runs `task` to `config.total_steps`, resuming from the newest checkpoint in the workdir.

    Returns:
      Summary: the final evaluation metrics, the throughput over this run's steps (compilation excluded),
      "steps", "wall_time_s" and "compile_time_s".
    """
    wall_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        save_config(config, workdir)
    init_fn, step_fn, target = shard_functions(task.init_state, task.train_step, mesh, config)
    data_sharding = batch_sharding(mesh)
    data_iterator = iter(task.dataset)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    resume_step = checkpointer.latest_step()
    if resume_step is None:
        state = init_fn(jax.random.PRNGKey(config.seed))
    else:
        state = checkpointer.restore(resume_step, target, data_iterator)
    writer = MetricWriter(workdir, resume_step=resume_step or 0)
    start = int(state.step)
    progress = tqdm.tqdm(
        total=config.total_steps,
        initial=start,
        desc=config.task,
        disable=not (config.progress_bar and writer.enabled),
        dynamic_ncols=True,
    )

    window: list[Metrics] = []
    untimed = 0  # steps of the window whose time is not counted (the compiling first step)
    window_start, paused = time.perf_counter(), 0.0
    train_seconds, timed_steps, compile_seconds = 0.0, 0, 0.0
    try:
        for step in range(start, config.total_steps):
            batch = put_batch(next(data_iterator), data_sharding)
            state, metrics = step_fn(state, batch)
            window.append(metrics)
            done = step + 1
            if step == start:
                # The first step compiles; keep it out of the throughput figures.
                jax.block_until_ready(state)
                compile_seconds = time.perf_counter() - window_start
                window_start, untimed = time.perf_counter(), 1
            progress.update(1)
            if done % config.log_every == 0 or done == config.total_steps:
                row = _mean(jax.device_get(window))
                seconds, timed = time.perf_counter() - window_start - paused, len(window) - untimed
                if timed:
                    row[task.throughput_key] = timed * task.examples_per_step / seconds
                    train_seconds, timed_steps = train_seconds + seconds, timed_steps + timed
                writer.write(done, row)
                progress.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in row.items() if k.startswith("train/")})
                window, untimed = [], 0
                window_start, paused = time.perf_counter(), 0.0
            pause_start = time.perf_counter()
            if config.eval_every and done % config.eval_every == 0 and done != config.total_steps:
                writer.write(done, task.evaluate(state.params))
            if done % config.checkpoint_every == 0 or done == config.total_steps:
                checkpointer.save(done, state, data_iterator)
            paused += time.perf_counter() - pause_start
        progress.close()
        summary = task.evaluate(state.params)
        if start < config.total_steps:  # a finished run re-run only reports; its log already has this row
            writer.write(int(state.step), summary)
    finally:
        # Lets an in-flight asynchronous save complete; orbax never exposes a half-written step anyway.
        checkpointer.close()
        writer.close()
    if timed_steps:
        summary[task.throughput_key] = timed_steps * task.examples_per_step / train_seconds
    summary.update(steps=int(state.step), wall_time_s=time.perf_counter() - wall_start, compile_time_s=compile_seconds)
    return summary


def _mean(rows: list[Metrics]) -> dict[str, float]:
    """Per-key mean over the steps of a logging window."""
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
