"""Segmentation finetuning through the command line on a tiny ADE20K release layout made from real photos:
mIoU over original-size labels, the per-class results, the best weights; and the config's one-line errors."""

import json
import os

import numpy as np
import pytest

from clipjax.config import load_config
from clipjax.errors import ConfigError
from clipjax.main import main
from clipjax.train.metrics import read_metrics
from clipjax.validation import validate
from clipjax.weights import read_metadata
from tests.helpers import tiny_model_flags
from tests.labelled_fixture import write_small_ade


@pytest.fixture(scope="module")
def small_ade(tmp_path_factory):
    return write_small_ade(tmp_path_factory.mktemp("ade"))


def test_segment_config_errors_are_one_line():
    config = load_config("configs/segment/demo.py", [("data.kind", "nyu"), ("data.path", "/x")])
    with pytest.raises(ConfigError, match=r"config.data.kind \(segmentation\)"):
        validate(config, num_devices=8, process_count=1)
    config = load_config("configs/segment/demo.py", [("finetune.best_metric", "eval/rmse")])
    with pytest.raises(ConfigError, match="best_metric"):
        validate(config, num_devices=8, process_count=1)
    config = load_config("configs/segment/demo.py", [("segmentation.mode", "tiles")])
    with pytest.raises(ConfigError, match="config.segmentation.mode"):
        validate(config, num_devices=8, process_count=1)
    config = load_config("configs/segment/demo.py", [("segmentation.mode", "whole")])
    with pytest.raises(ConfigError, match="mode='whole' needs a tower"):
        validate(config, num_devices=8, process_count=1)
    config = load_config("configs/segment/demo.py", [("model.image_size", "48")])
    with pytest.raises(ConfigError, match="multiple of 32"):
        validate(config, num_devices=8, process_count=1)


def test_segmentation_on_the_ade20k_layout_scores_original_sizes_and_keeps_the_best(small_ade, tmp_path):
    workdir = str(tmp_path / "run")
    flags = [
        "--config=configs/segment/demo.py",
        f"--workdir={workdir}",
        "--config.data.kind=ade20k",
        f"--config.data.path={small_ade}",
        "--config.data.num_workers=1",  # resize, crop and distortion run in a grain worker process
        "--config.batch_size=8",
        "--config.total_steps=4",
        "--config.eval_every=2",
        "--config.log_every=2",
        "--config.checkpoint_every=4",
        "--config.finetune.eval_batch_size=8",  # 2 images: one padded batch per canvas
        "--config.segmentation.scale=(48,32)",  # test resize: the shorter side to 32 (longer at most 48)
        "--config.segmentation.eval_stride=16",
        "--config.segmentation.flip_test=True",
        "--config.progress_bar=False",
        *tiny_model_flags(),
    ]
    assert main(flags) == 0
    evaluations = [row for row in read_metrics(workdir) if "eval/miou" in row]
    assert [row["step"] for row in evaluations] == [2, 4]
    for row in evaluations:
        assert 0 <= row["eval/miou"] <= row["eval/macc"] + 1e-9 and 0 <= row["eval/aacc"] <= 1
    with open(os.path.join(workdir, "segmentation_eval.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert [row["step"] for row in logged] == [2, 4]
    per_class = logged[-1]["per_class"]
    assert len(per_class) == 150 and "wall" in per_class and "flag" in per_class
    # Classes the validation labels hold (reduced: 1 -> 0, 3 -> 2, 13 -> 12, 150 -> 149) have an accuracy;
    # the others, absent from the ground truth, have none.
    present = [name for name, v in per_class.items() if v["acc"] is not None]
    assert present and set(present) <= {"wall", "sky", "person", "flag"}
    best = max(evaluations, key=lambda row: row["eval/miou"])
    saved = read_metadata(os.path.join(workdir, "best"))
    assert saved["task"] == "segment" and saved["num_classes"] == 150 and saved["metric"] == "eval/miou"
    assert saved["value"] == pytest.approx(best["eval/miou"], rel=1e-9)
    assert all(np.isfinite(row["train/loss"]) for row in read_metrics(workdir) if "train/loss" in row)
