"""The train loop on a toy task that compiles in a second: skipping non-finite steps, stopping on a bad
streak, SIGTERM, exact resume, changing the batch size, and the one-line errors of unusable workdirs."""

import errno
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict

from clipjax.data.batching import POSITION_FORMAT, host_batches
from clipjax.errors import ConfigError, Preempted, UserError
from clipjax.parallel import make_mesh
from clipjax.train.loop import check_compatible, train
from clipjax.train.metrics import read_metrics
from clipjax.train.state import TrainState
from tests.toy_task import Samples, toy_config, toy_task


def run(workdir, samples=None, **overrides):
    config = toy_config(**overrides)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    return train(config, str(workdir), mesh, toy_task(config, samples or Samples()))


def final_params(workdir, step):
    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)["params"]["w"]


def logged_values(workdir):
    """metrics.jsonl without the throughput, which depends on timing."""
    return [{k: v for k, v in row.items() if k != "train/pairs_per_s"} for row in read_metrics(str(workdir))]


def global_order(seed=0, count=200):
    """The ids of the samples in the order the toy pipeline yields them."""
    batches = host_batches(Samples(), lambda r, g: r, seed=seed, batch_size=4, process_index=0, process_count=1)
    iterator = iter(batches)
    return np.concatenate([next(iterator)["id"] for _ in range(count // 4)])


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    order = global_order()
    bad = int(order[9])  # in the batch of step 3 (samples 8..11)
    run(tmp_path / "clean")
    summary = run(tmp_path / "nan", Samples(nan_at=[bad]))
    rows = [r for r in read_metrics(str(tmp_path / "nan")) if "train/loss" in r]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1, 1, 1, 1]
    assert rows[1]["train/loss"] == "nan" and rows[1]["train/bad_streak"] == 1
    assert rows[2]["train/bad_streak"] == 0
    assert summary["steps"] == 12 and np.isfinite(summary["eval/w0"])


def test_a_streak_of_bad_steps_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    order = global_order()
    bad = [int(i) for i in order[24:40]]  # every sample of steps 7..10
    with pytest.raises(UserError, match=r"step 9: the loss or gradients were not finite for 3 steps in a row"):
        run(tmp_path, Samples(nan_at=bad), max_bad_steps=3, log_every=1)
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [3, 6]


def test_sigterm_saves_the_current_step_and_the_rerun_finishes_bit_identical(tmp_path):
    run(tmp_path / "whole")
    order = global_order()
    # The signal comes from a grain reader thread a few samples ahead of the step that uses them.
    with pytest.raises(Preempted, match=r"SIGTERM at step \d+: checkpoint saved") as stop:
        run(tmp_path / "cut", Samples(sigterm_at=int(order[21])))  # a sample of step 6
    stopped_at = stop.value.args[0].split("step ")[1].split(":")[0]
    assert int(stopped_at) < 12 and stopped_at in os.listdir(tmp_path / "cut" / "checkpoints")
    run(tmp_path / "cut")
    assert logged_values(tmp_path / "cut") == logged_values(tmp_path / "whole")
    np.testing.assert_array_equal(final_params(tmp_path / "cut", 12), final_params(tmp_path / "whole", 12))


def test_changing_the_batch_size_continues_at_the_first_unseen_sample(tmp_path, capsys):
    run(tmp_path, total_steps=6)  # 24 samples at batch 4
    run(tmp_path, total_steps=9, batch_size=8)  # 3 more steps of 8
    assert "data continues at record 24" in capsys.readouterr().out
    order = global_order()
    rows = [r for r in read_metrics(str(tmp_path)) if "train/id_sum" in r]
    # log_every=2: each row averages two steps' id sums; the last row holds step 9 alone.
    assert rows[-2]["train/id_sum"] == (order[24:32].sum() + order[32:40].sum()) / 2
    assert rows[-1]["train/id_sum"] == order[40:48].sum()


def test_changing_the_batch_size_continues_after_the_records_read_including_skipped_ones(tmp_path, capsys):
    order = global_order()
    corrupt = Samples(corrupt_at=[int(order[5]), int(order[17])])  # two records among the first 6 steps' reads
    run(tmp_path, corrupt, total_steps=6)  # 24 samples at batch 4, read from the first 26 records
    run(tmp_path, corrupt, total_steps=9, batch_size=8)
    assert "data continues at record 26 (24 trained on, 2 skipped)" in capsys.readouterr().out
    rows = [r for r in read_metrics(str(tmp_path)) if "train/id_sum" in r]
    # Neither a record read before the change nor one after it is skipped or read twice.
    assert rows[-2]["train/id_sum"] == (order[26:34].sum() + order[34:42].sum()) / 2
    assert rows[-1]["train/id_sum"] == order[42:50].sum()
    assert rows[-1]["data/skipped_corrupt_image"] == 2
    # Resumed again without a change, the stream is rebuilt from where the changed run started it: steps
    # 10-12 read on from record 50 (the second epoch, where the two records are skipped again).
    run(tmp_path, corrupt, total_steps=12, batch_size=8, log_every=1)
    usable = [i for i in order if i not in corrupt.corrupt_at]
    rows = [r for r in read_metrics(str(tmp_path)) if "train/id_sum" in r and r["step"] > 9]
    assert [r["train/id_sum"] for r in rows] == [sum(usable[k : k + 8]) for k in (48, 56, 64)]


def test_a_data_position_of_an_older_form_continues_after_the_records_read(tmp_path, capsys):
    """Checkpoints written before the batcher stacked in its workers hold the element stream's position (no
    "data_format" in their loop JSON): the run continues after the records read, as after a batch change."""
    order = global_order()
    corrupt = Samples(corrupt_at=[int(order[5])])
    run(tmp_path, corrupt, total_steps=6)  # 24 samples from the first 25 records
    path = tmp_path / "checkpoints" / "6" / "loop" / "metadata"
    loop = json.loads(path.read_text())
    assert loop.pop("data_format") == POSITION_FORMAT
    path.write_text(json.dumps(loop))
    run(tmp_path, corrupt, total_steps=8, log_every=1)
    assert "from a data position saved by an older clipjax: data continues at record 25 (24 trained on" in (
        capsys.readouterr().out
    )
    rows = [r for r in read_metrics(str(tmp_path)) if "train/id_sum" in r and r["step"] > 6]
    assert [r["train/id_sum"] for r in rows] == [order[25:29].sum(), order[29:33].sum()]


def test_incompatible_config_or_model_is_refused_and_nothing_is_deleted(tmp_path):
    run(tmp_path, total_steps=6)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(ConfigError, match=r"config.seed was 0 when the checkpoints in .* were written and is 1 now"):
        run(tmp_path, seed=1)
    config = toy_config()
    config.mesh = ConfigDict({"data": 1, "fsdp": 1})
    task = toy_task(config, Samples())
    task.init_state = lambda rng: TrainState.create({"params": {"w": jnp.zeros(5)}}, optax.sgd(0.01), rng)
    with pytest.raises(ConfigError, match=r"holds a different model: opt_state.* is|params/w is \(4,\) there"):
        train(config, str(tmp_path), make_mesh(config.mesh, jax.devices()[:1]), task)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_unwritable_workdir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match=r"workdir .*file/run is not writable: Not a directory"):
        run(tmp_path / "file" / "run")


def test_a_full_disk_during_a_save_is_one_line_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    run(tmp_path, total_steps=6)
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step >= 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(UserError, match=r"could not write the checkpoint of step 9 .*No space left on device"):
        run(tmp_path)
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [3, 6]
    with open(tmp_path / "checkpoints" / "6" / "loop" / "metadata") as f:
        assert json.load(f)["samples_seen"] == 24


def test_keeps_the_newest_and_every_kth_checkpoint(tmp_path):
    run(tmp_path, keep_checkpoints=1, keep_every=6)
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [6, 12]


def test_resuming_on_more_devices_reshards_the_state(tmp_path):
    run(tmp_path / "whole", fsdp_min_size=1, batch_size=8)
    run(tmp_path / "moved", total_steps=6, fsdp_min_size=1, batch_size=8)  # one device
    config = toy_config(fsdp_min_size=1, batch_size=8)
    config.mesh = ConfigDict({"data": 4, "fsdp": 2})  # eight devices; w [4] is split over fsdp
    summary = train(config, str(tmp_path / "moved"), make_mesh(config.mesh), toy_task(config, Samples()))
    assert summary["steps"] == 12
    np.testing.assert_allclose(final_params(tmp_path / "moved", 12), final_params(tmp_path / "whole", 12), rtol=1e-6)


def test_resuming_may_change_drop_path_but_not_switch_the_weight_average_or_fp8_histories(tmp_path):
    saved = toy_config()
    saved.optim.ema_decay = 0.0
    config = toy_config()
    config.model.drop_path = 0.2  # training noise only: a run may resume with another rate
    config.model.fp8_matmuls = "all"  # the same parameters, computed with other products
    check_compatible(saved.to_dict(), config, str(tmp_path))
    config.optim.ema_decay = 0.999
    with pytest.raises(ConfigError, match=r"config.optim.ema_decay was 0.0 .* is 0.999 now: the weight average"):
        check_compatible(saved.to_dict(), config, str(tmp_path))
    config.optim.ema_decay = 0.0
    # Delayed scaling keeps amax histories in the state: FP8 may not be switched on or off under it.
    saved.model.fp8_amax_history = config.model.fp8_amax_history = 16
    with pytest.raises(ConfigError, match=r"fp8_matmuls was 'none' .* amax histories cannot be added or dropped"):
        check_compatible(saved.to_dict(), config, str(tmp_path))
    config.model.fp8_matmuls = "none"
    config.model.name = "vit_s16"
    with pytest.raises(ConfigError, match="config.model.name was"):
        check_compatible(saved.to_dict(), config, str(tmp_path))


def test_the_loop_state_handed_to_a_save_is_not_changed_by_later_steps(tmp_path, monkeypatch):
    """The loop JSON is written in the background after `save` returns: the steps after a checkpoint must not
    add their metrics to the window it holds (they did once: a device array reached the JSON writer)."""
    from clipjax.train.checkpoint import Checkpointer

    handed, real_save = [], Checkpointer.save

    def recording_save(self, step, state, data_position, loop):
        handed.append((step, loop, [dict(row) for row in loop["window"]]))
        return real_save(self, step, state, data_position, loop)

    monkeypatch.setattr(Checkpointer, "save", recording_save)
    run(tmp_path)  # logs every 2 steps, saves every 3: each save holds the rows since the last log
    assert [step for step, *_ in handed] == [3, 6, 9, 12]
    for step, loop, window_when_saved in handed:
        assert loop["window"] == window_when_saved and len(window_when_saved) == step % 2
