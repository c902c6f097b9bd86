"""metrics.jsonl: one JSON row a line, non-finite values kept readable, rows of a lost segment set aside."""

import json

from clipjax.train.metrics import DISCARDED_FILE, METRICS_FILE, MetricWriter, read_metrics


def test_rows_are_json_with_step_and_non_finite_values_survive(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(10, {"train/loss": 1.5, "train/grad_norm": float("nan")})
    writer.write(10, {"eval/zeroshot_top1": 0.25})
    writer.close()
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 10, "train/loss": 1.5, "train/grad_norm": "nan"},
        {"step": 10, "eval/zeroshot_top1": 0.25},
    ]
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_resuming_sets_aside_rows_logged_after_the_checkpoint(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in (10, 20, 30, 40):
        writer.write(step, {"train/loss": float(step)})
    writer.close()
    resumed = MetricWriter(str(tmp_path), resume_step=20)
    resumed.write(30, {"train/loss": 3.0})
    resumed.close()
    assert [(row["step"], row["train/loss"]) for row in read_metrics(str(tmp_path))] == [
        (10, 10.0),
        (20, 20.0),
        (30, 3.0),
    ]
    set_aside = [json.loads(line) for line in (tmp_path / DISCARDED_FILE).read_text().splitlines()]
    assert [row["step"] for row in set_aside] == [30, 40]


def test_a_line_torn_by_a_crash_is_set_aside(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(10, {"train/loss": 1.0})
    writer.close()
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 20, "train/lo')
    MetricWriter(str(tmp_path), resume_step=10).close()
    assert read_metrics(str(tmp_path)) == [{"step": 10, "train/loss": 1.0}]
    assert (tmp_path / DISCARDED_FILE).read_text() == '{"step": 20, "train/lo\n'
