"""Zero-shot and retrieval evaluation: exact counts over whole splits on 8 devices, against numpy oracles."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from clipjax.data.images import center_crop, decode_image
from clipjax.data.transforms import normalize_images
from clipjax.errors import ConfigError, UserError
from clipjax.evals.batches import host_indices
from clipjax.evals.retrieval import RetrievalSplit, recall_at_k
from clipjax.evals.setup import imagenet_prompts, make_evaluator
from clipjax.models import CLIP, build_clip
from clipjax.parallel import make_mesh
from clipjax.tokenizer import tokenize
from tests.helpers import tiny_config
from tests.shards import encode, photos


def recall_oracle(image_emb, text_emb, caption_image, k):
    """Full score matrix and sorted ranks: the textbook definition."""
    scores = image_emb @ text_emb.T
    i2t = []
    for i in range(len(image_emb)):
        order = np.argsort(-scores[i], kind="stable")
        i2t.append(np.isin(order[:k], np.flatnonzero(caption_image == i)).any())
    t2i = []
    for j in range(len(text_emb)):
        order = np.argsort(-scores[:, j], kind="stable")
        t2i.append(caption_image[j] in order[:k])
    return float(np.mean(i2t)), float(np.mean(t2i))


def test_recall_at_k_matches_sorting_the_full_score_matrix():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(37, 8))
    owners = np.repeat(np.arange(37), rng.integers(1, 4, size=37))
    # Captions near their image, so recalls are neither 0 nor 1.
    texts = images[owners] + rng.normal(scale=1.2, size=(len(owners), 8))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    metrics = recall_at_k(images, texts, owners, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        i2t, t2i = recall_oracle(images, texts, owners, k)
        assert metrics[f"i2t_r{k}"] == pytest.approx(i2t) and metrics[f"t2i_r{k}"] == pytest.approx(t2i)
    assert 0 < metrics["t2i_r1"] < metrics["t2i_r10"] < 1


def test_hosts_load_disjoint_contiguous_shares_covering_the_split_once():
    hosts = [host_indices(21, 8, p, 2) for p in range(2)]
    assert hosts[0].shape == (3, 4)
    np.testing.assert_array_equal(hosts[0][0], [0, 1, 2, 3])
    np.testing.assert_array_equal(hosts[1][0], [4, 5, 6, 7])
    everything = np.concatenate([h.reshape(-1) for h in hosts])
    assert sorted(everything[everything >= 0].tolist()) == list(range(21))
    assert (everything == -1).sum() == 3


def test_imagenet_class_names_and_templates_ship_with_the_package():
    classnames, templates = imagenet_prompts()
    assert len(classnames) == 1000
    # OpenAI's list names two pairs of ImageNet classes alike; kept as published, for comparable numbers.
    assert classnames[657] == classnames[744] == "missile" and classnames[836] == classnames[837] == "sunglasses"
    assert len(set(classnames)) == 998
    assert classnames[:3] == ("tench", "goldfish", "great white shark") and classnames[-1] == "toilet paper"
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """An ImageFolder of 3 classes and 13 photos, and a retrieval JSONL over 11 of them."""
    root = tmp_path_factory.mktemp("eval")
    p = photos()
    names = list(p)
    folder = root / "folder"
    classes = ["big_cat", "space_photo", "still_life"]
    files = []
    for i, name in enumerate(names + ["astronaut"]):
        label = i % 3
        fmt = "jpg" if p[name].mode == "CMYK" else "png"
        path = folder / classes[label] / f"{i:02d}_{name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(p[name], fmt))
        files.append((path, label))
    lines = []
    for i, name in enumerate(names[:11]):
        captions = [f"a photo of {name}"] + [f"another view of {name} number {j}" for j in range(i % 3)]
        lines.append(json.dumps({"image": os.path.relpath(files[i][0], root), "captions": captions}))
    (root / "retrieval.jsonl").write_text("\n".join(lines) + "\n")
    return root, sorted(files), classes


def tiny_eval_config(root, **zeroshot):
    config = tiny_config({"data": 4, "fsdp": 2})
    config.eval.zeroshot.update(kind="folder", path=str(root / "folder"), classnames="source", batch_size=8)
    config.eval.zeroshot.update(zeroshot)
    config.eval.retrieval.update(path=str(root / "retrieval.jsonl"), batch_size=8)
    config.eval.num_threads = 2
    return config


def test_zeroshot_and_retrieval_equal_numpy_on_unsharded_embeddings(eval_data):
    root, files, classes = eval_data
    config = tiny_eval_config(root)
    model = build_clip(config.model)
    size, length = config.model.image_size, config.model.text.context_length
    params = jax.jit(model.init)(
        jax.random.PRNGKey(1), jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32)
    )["params"]
    metrics = make_evaluator(model, make_mesh(config.mesh), config)({"params": params})

    # Oracle: one device, no batching, numpy top-k.
    def images(paths):
        # The same decode as the pipeline (JPEGs at reduced scale): this test is about batching and metrics.
        pixels = np.stack([center_crop(decode_image(open(path, "rb").read(), target=size), size) for path in paths])
        out = jax.jit(functools.partial(model.apply, method=CLIP.encode_image))(
            {"params": params}, normalize_images(pixels, "clip")
        )
        return np.asarray(out)

    def texts(strings):
        encode = jax.jit(functools.partial(model.apply, method=CLIP.encode_text))
        return np.asarray(encode({"params": params}, tokenize(strings, length)))

    _, templates = imagenet_prompts()
    names = [c.replace("_", " ") for c in classes]
    prompts = texts([t.format(n) for n in names for t in templates]).reshape(3, len(templates), -1).mean(1)
    classifier = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)
    logits = images([f for f, _ in files]) @ classifier.T
    labels = np.array([label for _, label in files])
    assert metrics["eval/zeroshot_top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert metrics["eval/zeroshot_top5"] == 1.0  # 3 classes: the label is always among the best 5

    split = RetrievalSplit(str(root / "retrieval.jsonl"))
    image_emb, text_emb = images(split.images), texts(split.captions)
    for k in (1, 5, 10):
        i2t, t2i = recall_oracle(image_emb, text_emb, split.caption_image, k)
        assert metrics[f"eval/retrieval_i2t_r{k}"] == pytest.approx(i2t)
        assert metrics[f"eval/retrieval_t2i_r{k}"] == pytest.approx(t2i)


def test_an_undecodable_evaluation_image_stops_with_its_file_name(eval_data, tmp_path):
    root, files, _ = eval_data
    folder = tmp_path / "folder"
    for path, label in files[:3]:
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{label}" / path.name).write_bytes(path.read_bytes())
    (folder / "c0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "retrieval.jsonl").write_text("")
    config = tiny_eval_config(tmp_path)
    config.eval.retrieval.path = None
    model = build_clip(config.model)
    size, length = config.model.image_size, config.model.text.context_length
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32))
    evaluate = make_evaluator(model, make_mesh(config.mesh), config)
    with pytest.raises(UserError, match="broken.jpg cannot be decoded"):
        evaluate(params)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"image": "x.png"}', ":1: expected"),
        ('{"image": "x.png", "captions": []}', ":1: expected"),
        ('{"image": "x.png", "captions": ["  "]}', ":1: expected"),
        ("not json", ":1: expected"),
        ('{"image": "absent.png", "captions": ["a"]}', ":1: image .*absent.png does not exist"),
    ],
)
def test_bad_retrieval_lines_are_named_by_file_and_line(tmp_path, line, message):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "split.jsonl").write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        RetrievalSplit(str(tmp_path / "split.jsonl"))


def test_imagenet_class_names_need_a_thousand_classes(eval_data):
    root, _, _ = eval_data
    config = tiny_eval_config(root, classnames="imagenet")
    with pytest.raises(ConfigError, match="has 3 classes, not the 1000 ImageNet classes"):
        make_evaluator(build_clip(config.model), make_mesh(config.mesh), config)


def test_evaluation_refuses_the_workdir_of_a_training_run(tmp_path):
    """Evaluating into a pretraining workdir (e.g. --workdir equal to config.init) would move its metrics rows
    after step 0 aside and rename its config.json; it is refused in one line, an evaluation workdir is not."""
    from clipjax.train.workdir import refuse_a_training_workdir

    refuse_a_training_workdir(str(tmp_path / "fresh"))  # nothing there yet
    (tmp_path / "config.json").write_text(json.dumps({"task": "evaluate"}))
    refuse_a_training_workdir(str(tmp_path))  # an earlier evaluation: its rows are step 0 rows
    (tmp_path / "config.json").write_text(json.dumps({"task": "pretrain"}))
    with pytest.raises(ConfigError, match=r"holds a 'pretrain' run; write the evaluation to another directory") as e:
        refuse_a_training_workdir(str(tmp_path))
    assert "\n" not in str(e.value)
