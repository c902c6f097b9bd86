"""The one train loop every task runs: init or resume, step, log, evaluate, checkpoint, stop cleanly.

A task hands the loop a `Task`: how to build the initial state, the (unjitted) train step, its dataset
and its evaluator. The loop owns the jit with explicit shardings and buffer donation, the workdir
(config.json, metrics.jsonl, TensorBoard events, checkpoints/), exact resume, preemption handling and
the progress bar.

Resuming is exact: the checkpoint holds the state, the data iterator position and the metrics of the
logging window in progress, so a run killed at any moment and restarted with the same command logs the
same `train/loss` sequence and ends with the same parameters as an uninterrupted run. If the global
batch size or the number of hosts changed, or the data position was saved in an older form, the data
restarts at the first record not yet read (exactly on one host; with several, to within the difference
between the numbers of records they skipped).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from typing import Any, Callable

import grain
import jax
import numpy as np
import tqdm
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clipjax import distributed
from clipjax.data.batching import POSITION_FORMAT
from clipjax.data.skips import SKIP_REASONS
from clipjax.errors import ConfigError, Preempted, UserError
from clipjax.parallel import batch_sharding, replicated, state_shardings
from clipjax.train.checkpoint import Checkpointer, abstract_shapes
from clipjax.train.metrics import MetricWriter
from clipjax.train.preemption import PreemptionGuard
from clipjax.train.prefetch import DevicePrefetcher
from clipjax.train.state import TrainState
from clipjax.train.workdir import prepare_workdir, save_config

Metrics = dict[str, Any]

# Config keys a run cannot change and still continue its checkpoints, beside the task's own
# (`Task.checkpoint_keys`): model.dtype, model.remat, model.attention and model.fp8_matmuls only change how the
# same function is computed, model.drop_path only its training noise, so they may change. Turning the weight
# average (optim.ema_decay) or delayed scaling's amax histories (model.fp8_matmuls with model.fp8_amax_history
# > 0) on or off changes the state's arrays.
INCOMPATIBLE_KEYS = ("task", "seed", "model")
COMPATIBLE_MODEL_KEYS = ("model.dtype", "model.remat", "model.attention", "model.fp8_matmuls", "model.drop_path")
# Keys that configs saved by earlier versions lack, with the value those versions meant.
LATER_KEYS = {"model.image.layout": "clip", "model.scan": False, "model.fp8_amax_history": 0}
# How a logging window reduces each metric; everything else is averaged.
WINDOW_REDUCTIONS = {"train/skipped_steps": "last", "train/bad_streak": "max"}


@dataclasses.dataclass
class Task:
    """What a task gives the loop.

    init_state: rng key (uint32 [2]) -> TrainState; jitted by the loop so parameters are born sharded.
    train_step: (TrainState, batch dict of global arrays) -> (TrainState, scalar metrics); jitted by the
      loop with the state donated. It should update through `TrainState.apply_gradients`.
    dataset: start_sample -> this host's batches from global record `start_sample` on; the iterator's
      position (counted from that start) is checkpointed.
    evaluate: model variables ({"params": ..., ...}) -> metrics (e.g. {"eval/zeroshot_top1": 0.6}); run every
      eval_every steps and at the end.
    examples_per_step: global examples per step, for the throughput metric named `throughput_key`.
    after_init: TrainState -> TrainState, applied once to a fresh state (not on resume), e.g. to load
      pretrained weights into it.
    on_evaluated: (step, state, metrics) -> None after each evaluation, on every host, e.g. to keep the
      best weights.
    checkpoint_keys: config keys, beyond INCOMPATIBLE_KEYS, that a resumed run must not change (e.g.
      pretraining's "loss.kind").
    With an EMA of the parameters in the state, evaluations also run on the averaged weights, their
    metrics named eval_ema/... beside eval/....
    """

    init_state: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]
    dataset: Callable[[int], grain.IterDataset]
    evaluate: Callable[[Any], Metrics]
    examples_per_step: int
    throughput_key: str = "train/pairs_per_s"
    after_init: Callable[[TrainState], TrainState] | None = None
    on_evaluated: Callable[[int, TrainState, Metrics], None] | None = None
    checkpoint_keys: tuple[str, ...] = ()


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


def keeps_fp8_stats(flat_config: dict[str, Any]) -> bool:
    """Whether a run with this (flattened) config keeps delayed scaling's amax histories in its state."""
    return flat_config.get("model.fp8_matmuls", "none") != "none" and flat_config.get("model.fp8_amax_history", 0) > 0


def check_compatible(
    saved: dict[str, Any], config: ConfigDict, directory: str, task_keys: tuple[str, ...] = ()
) -> None:
    """Raises ConfigError if `config` changed a key the checkpoints in `directory` depend on: INCOMPATIBLE_KEYS
    and the task's `task_keys`."""
    old, new = _flatten(saved), _flatten(config.to_dict())
    for key in sorted(set(old) | set(new)):
        incompatible = any(key == k or key.startswith(k + ".") for k in (*INCOMPATIBLE_KEYS, *task_keys))
        was = old.get(key, LATER_KEYS.get(key))
        if incompatible and key not in COMPATIBLE_MODEL_KEYS and was != new.get(key):
            raise ConfigError(
                f"config.{key} was {was!r} when the checkpoints in {directory} were written and is "
                f"{new.get(key)!r} now; resuming would mix two runs: restore the old value or use a new --workdir"
            )
    if keeps_fp8_stats(old) != keeps_fp8_stats(new):
        raise ConfigError(
            f"config.model.fp8_matmuls was {old.get('model.fp8_matmuls', 'none')!r} when the checkpoints in "
            f"{directory} were written and is {new.get('model.fp8_matmuls')!r} now, with "
            f"model.fp8_amax_history={new.get('model.fp8_amax_history')}: delayed scaling's amax histories cannot be "
            "added or dropped mid-run; restore the old value or use a new --workdir"
        )
    if (old.get("optim.ema_decay", 0.0) > 0) != (new.get("optim.ema_decay", 0.0) > 0):
        raise ConfigError(
            f"config.optim.ema_decay was {old.get('optim.ema_decay', 0.0)!r} when the checkpoints in {directory} "
            f"were written and is {new.get('optim.ema_decay')!r} now: the weight average cannot be turned on or off "
            "mid-run; restore the old value or use a new --workdir"
        )


def check_shapes(saved: dict[str, tuple], expected: dict[str, tuple], step: int, directory: str) -> None:
    """Raises ConfigError if checkpoint `step` does not hold the arrays this config builds."""
    for path in sorted(set(saved) | set(expected)):
        if saved.get(path) != expected.get(path):
            raise ConfigError(
                f"the checkpoint of step {step} in {directory} holds a different model: {path} is "
                f"{saved.get(path, 'missing')} there and {expected.get(path, 'missing')} in this config; "
                "use the config that wrote it or a new --workdir"
            )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def train(config: ConfigDict, workdir: str, mesh: Mesh, task: Task) -> Metrics:
    """Runs `task` to `config.total_steps`, resuming from the newest checkpoint in the workdir.

    Returns:
      Summary: the final evaluation metrics, the throughput over this run's steps (compilation excluded),
      "steps", "wall_time_s" and "compile_time_s".

    Raises:
      UserError (ConfigError): the workdir is unusable, its checkpoints do not fit this config, a
        checkpoint could not be written, or the loss stayed non-finite for config.max_bad_steps steps.
      Preempted: SIGTERM / SIGINT arrived; a checkpoint of the current step was saved.
    """
    wall_start = time.perf_counter()
    prepare_workdir(workdir)
    init_fn, step_fn, target = shard_functions(task.init_state, task.train_step, mesh, config)
    checkpointer = Checkpointer(
        config.checkpoint_dir or os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        keep_every=config.keep_every,
    )
    resume_step = checkpointer.latest_step()
    state, data_iterator, carried, epoch_records = _init_or_resume(
        config, task, checkpointer, resume_step, init_fn, target
    )
    if jax.process_index() == 0:
        save_config(config, workdir)
    writer = MetricWriter(workdir, resume_step=resume_step or 0)
    start = int(state.step)
    samples_seen = carried["samples_seen"]
    # The record this run's data stream started at (non-zero after a layout change): the iterator's saved
    # position counts from it, so a later resume must rebuild the stream from the same record.
    data_start = carried.get("data_start", 0)
    # Unusable records dropped by the pipeline, by reason: all hosts' counts up to the checkpoint (kept by
    # host 0 only, so that summing over hosts counts them once) plus this host's since.
    skipped = Counter(carried.get("data_skipped", {}) if jax.process_index() == 0 else {})
    # Metrics of the logging window in progress, as host floats when restored from the checkpoint.
    window: list[Metrics] = list(carried["window"])
    untimed = len(window) + 1  # restored steps and the compiling first step have no time in this run
    window_start, paused = time.perf_counter(), 0.0
    train_seconds, timed_steps, compile_seconds = 0.0, 0, 0.0
    progress = tqdm.tqdm(
        total=config.total_steps,
        initial=start,
        desc=config.task,
        disable=not (config.progress_bar and writer.enabled),
        dynamic_ncols=True,
    )
    batches = DevicePrefetcher(data_iterator, batch_sharding(mesh), config.data.prefetch_to_device)
    try:
        with PreemptionGuard(config.preemption_grace_s) as guard:
            for step in range(start, config.total_steps):
                batch, batch_skipped = next(batches)
                skipped.update(batch_skipped)
                state, metrics = step_fn(state, batch)
                window.append(metrics)
                samples_seen += config.batch_size
                done = step + 1
                if step == start:
                    jax.block_until_ready(state)
                    compile_seconds = time.perf_counter() - window_start
                    window_start = time.perf_counter()
                progress.update(1)
                if done % config.log_every == 0 or done == config.total_steps:
                    rows = _host_window(window, done, config.max_bad_steps, checkpointer)
                    row = _reduce(rows)
                    seconds, timed = time.perf_counter() - window_start - paused, len(rows) - untimed
                    if timed > 0:
                        row[task.throughput_key] = timed * task.examples_per_step / seconds
                        train_seconds, timed_steps = train_seconds + seconds, timed_steps + timed
                    all_skipped = _skips_of_all_hosts(skipped)
                    row.update(_skip_metrics(all_skipped))
                    if epoch_records:  # passes over the training records: the records read, usable or not
                        row["data/epochs"] = (samples_seen + sum(all_skipped.values())) / epoch_records
                    writer.write(done, row)
                    progress.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in row.items() if "loss" in k})
                    window, untimed = [], 0
                    window_start, paused = time.perf_counter(), 0.0
                pause_start = time.perf_counter()
                if config.eval_every and done % config.eval_every == 0 and done != config.total_steps:
                    writer.write(done, _evaluate(task, state, done))
                # Every host must stop at the same step (the save is collective); agreeing costs a host
                # sync, so a multi-host job checks every stop_check_every steps.
                stop = guard.requested
                if jax.process_count() > 1:
                    stop = done % config.stop_check_every == 0 and distributed.any_host(stop)
                if done % config.checkpoint_every == 0 or done == config.total_steps or stop:
                    window = _host_window(window, done, config.max_bad_steps, checkpointer)
                    loop = {
                        "samples_seen": samples_seen,
                        "data_start": data_start,
                        "data_format": POSITION_FORMAT,
                        "batch_size": config.batch_size,
                        "process_count": jax.process_count(),
                        # A copy: the loop appends the next steps' metrics to `window` while the save
                        # writes this JSON in the background.
                        "window": list(window),
                        "data_skipped": _skips_of_all_hosts(skipped),
                        "config": config.to_dict(),
                    }
                    checkpointer.save(done, state, batches.get_state(), loop)
                if stop:
                    checkpointer.wait()
                    raise Preempted(
                        f"{guard.signal_name} at step {done}: checkpoint saved in {checkpointer.directory}; "
                        "run the same command again to resume"
                    )
                paused += time.perf_counter() - pause_start
            progress.close()
            summary = _evaluate(task, state, int(state.step))
            if start < config.total_steps:  # a finished run re-run only reports; its log already has this row
                writer.write(int(state.step), summary)
            checkpointer.wait()
    finally:
        batches.close()
        progress.close()
        writer.close()
        checkpointer.close()
    if timed_steps:
        summary[task.throughput_key] = timed_steps * task.examples_per_step / train_seconds
    summary.update(steps=int(state.step), wall_time_s=time.perf_counter() - wall_start, compile_time_s=compile_seconds)
    return summary


def _init_or_resume(
    config: ConfigDict,
    task: Task,
    checkpointer: Checkpointer,
    step: int | None,
    init_fn: Callable,
    target: Any,
) -> tuple[TrainState, grain.DatasetIterator, dict[str, Any], int | None]:
    """A fresh state and data stream, or both restored from checkpoint `step`; plus the carried loop state and
    the records one epoch of the data holds (None when the dataset does not say)."""
    if step is None:
        state = init_fn(jax.random.PRNGKey(config.seed))
        if task.after_init is not None:
            state = task.after_init(state)
        dataset = task.dataset(0)
        return state, iter(dataset), {"samples_seen": 0, "window": []}, _records_per_epoch(dataset)
    carried = checkpointer.loop_state(step)
    check_compatible(carried["config"], config, checkpointer.directory, task.checkpoint_keys)
    check_shapes(checkpointer.saved_shapes(step), abstract_shapes(target), step, checkpointer.directory)
    same_layout = carried["batch_size"] == config.batch_size and carried["process_count"] == jax.process_count()
    same_format = carried.get("data_format", 1) == POSITION_FORMAT
    if same_layout and same_format:
        dataset = task.dataset(carried.get("data_start", 0))
        data_iterator = iter(dataset)
        state = checkpointer.restore(step, target, data_iterator)
    else:
        # The iterator position counts batches of the old layout (or is of an older form); continue after the
        # records read instead:
        # the samples trained on plus the unusable ones the pipeline dropped on the way (all hosts').
        # Exact on one host; hosts that skipped different numbers of records had read unequally far.
        dropped = sum(carried.get("data_skipped", {}).values())
        records_read = carried["samples_seen"] + dropped
        carried["data_start"] = records_read
        dataset = task.dataset(records_read)
        data_iterator = iter(dataset)
        state = checkpointer.restore(step, target, None)
        if jax.process_index() == 0:
            why = (
                f"with global batch {config.batch_size} on {jax.process_count()} host(s) (was "
                f"{carried['batch_size']} on {carried['process_count']})"
                if not same_layout
                else "from a data position saved by an older clipjax"
            )
            print(
                f"resuming step {step} {why}: data continues at record {records_read} "
                f"({carried['samples_seen']} trained on, {dropped} skipped)",
                flush=True,
            )
    return state, data_iterator, carried, _records_per_epoch(dataset)


def _records_per_epoch(dataset: Any) -> int | None:
    """The training records one epoch holds, as the generic batcher's datasets carry it."""
    return getattr(dataset, "records_per_epoch", None)


def _evaluate(task: Task, state: TrainState, step: int) -> Metrics:
    """The task's evaluation of the state's weights, and of their moving average when the state keeps one."""
    metrics = dict(task.evaluate(state.variables))
    if getattr(state, "ema_params", None) is not None:
        averaged = task.evaluate(state.ema_variables)
        metrics.update({key.replace("eval/", "eval_ema/", 1): value for key, value in averaged.items()})
    if task.on_evaluated is not None:
        task.on_evaluated(step, state, metrics)
    return metrics


def _host_window(window: list[Metrics], done: int, max_bad_steps: int, checkpointer: Checkpointer) -> list[Metrics]:
    """Fetches the window's metrics as host floats, and stops the run if updates kept being skipped."""
    rows = [{key: float(value) for key, value in row.items()} for row in jax.device_get(window)]
    for offset, row in enumerate(rows):
        if max_bad_steps and row.get("train/bad_streak", 0) >= max_bad_steps:
            failed_step = done - len(rows) + offset + 1
            latest = checkpointer.latest_step()
            raise UserError(
                f"step {failed_step}: the loss or gradients were not finite for {max_bad_steps} steps in a row "
                f"(config.max_bad_steps); stopped without saving. The newest checkpoint is "
                f"{'step ' + str(latest) if latest is not None else 'none'} in {checkpointer.directory}"
            )
    return rows


def _skips_of_all_hosts(skipped: Counter) -> dict[str, int]:
    """This host's skip counts summed with every other host's (a collective: all hosts call it together)."""
    counts = distributed.sum_over_hosts(np.array([skipped.get(reason, 0) for reason in SKIP_REASONS], np.int64))
    return {reason: int(count) for reason, count in zip(SKIP_REASONS, counts) if count}


def _skip_metrics(skipped: dict[str, int]) -> dict[str, float]:
    """data/skipped (all reasons) and data/skipped_<reason>, counted since the run began."""
    if not skipped:
        return {}
    return {"data/skipped": float(sum(skipped.values())), **{f"data/skipped_{k}": float(v) for k, v in skipped.items()}}


def _reduce(rows: list[Metrics]) -> dict[str, float]:
    """One log row from a window's per-step metrics: mean, or as WINDOW_REDUCTIONS says.

    Values are averaged in float64, where float32 and restored floats agree exactly, so a resumed run
    logs bit-identical rows.
    """
    reduced = {}
    for key in rows[0]:
        values = np.asarray([row[key] for row in rows], np.float64)
        how = WINDOW_REDUCTIONS.get(key, "mean")
        reduced[key] = float(values[-1] if how == "last" else values.max() if how == "max" else values.mean())
    return reduced
