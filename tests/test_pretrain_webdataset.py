"""End to end through the command line: a short pretraining on DataComp shards joined with DataCompDR,
distilling from the stored teacher embeddings, bad samples skipped and counted by reason, evaluated by
zero-shot classification and retrieval."""

import json

from clipjax.main import main
from clipjax.train.metrics import read_metrics
from tests.shards import TEACHER_WIDTH, encode, photos, write_datasets


def test_pretraining_on_datacomp_and_datacompdr_shards(repo_root, tmp_path, capsys):
    written = write_datasets(str(tmp_path / "data"))
    # Retrieval over three of the photos.
    p = photos()
    lines = []
    for name in ("astronaut", "chelsea", "coffee"):
        (tmp_path / f"{name}.jpg").write_bytes(encode(p[name], "jpg"))
        lines.append(json.dumps({"image": f"{name}.jpg", "captions": [f"a photo of the {name}"]}))
    (tmp_path / "retrieval.jsonl").write_text("\n".join(lines))
    workdir = str(tmp_path / "run")
    status = main(
        [
            f"--config={repo_root}/tests/configs/tiny_pretrain.py",
            f"--workdir={workdir}",
            "--config.data.kind=webdataset",
            f"--config.data.path={written.image_pattern}",
            f"--config.data.synthetic_path={written.synthetic_pattern}",
            "--config.data.captions=both",
            "--config.loss.distill_weight=0.75",
            f"--config.loss.teacher_dims=({TEACHER_WIDTH // 2},{TEACHER_WIDTH // 2})",
            "--config.total_steps=4",
            "--config.log_every=4",
            "--config.eval_every=0",
            "--config.eval.zeroshot.num_examples=16",
            f"--config.eval.retrieval.path={tmp_path / 'retrieval.jsonl'}",
            "--config.eval.retrieval.batch_size=8",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "00001.tar is truncated" in captured.err
    train_row, eval_row = read_metrics(workdir)
    # 4 steps x 16 images = 64 usable samples, 8 usable per epoch under "both" with distillation: exactly 8
    # epochs, each dropping every unusable sample once (the last epoch's may remain after its last pair).
    expected = written.expected_skips("both", distill=True)
    counted = {
        key.removeprefix("data/skipped_"): value for key, value in train_row.items() if key.startswith("data/skipped_")
    }
    assert set(counted) == set(expected)
    for reason, count in expected.items():
        assert 7 * count <= counted[reason] <= 8 * count, reason
    assert train_row["data/skipped"] == sum(counted.values())
    # The logged loss is MobileCLIP's mix of its logged parts (a window's averages mix the same way).
    assert (
        abs(train_row["train/loss"] - (0.25 * train_row["train/clip_loss"] + 0.75 * train_row["train/distill_loss"]))
        < 1e-4
    )
    assert train_row["train/distill_loss"] > 0
    for key in ("eval/zeroshot_top1", "eval/zeroshot_top5", "eval/retrieval_i2t_r1", "eval/retrieval_t2i_r10"):
        assert 0.0 <= eval_row[key] <= 1.0
    assert eval_row["eval/retrieval_t2i_r10"] == 1.0  # 3 images: each is among the top 10
