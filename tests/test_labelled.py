"""Labelled image sources without TensorFlow: tf.Example against protobuf's own parser, a TFDS array_record
dataset laid out as TFDS writes it, and ImageFolder trees."""

import os

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from clipjax.data.labelled import ImageFolderSource, TfdsSource
from clipjax.data.tf_example import parse_example, serialize_example
from clipjax.errors import ConfigError
from tests.labelled_fixture import write_folder, write_tfds
from tests.shards import encode, photos


def example_message_class():
    """tf.train.Example built from its .proto definition (tensorflow/core/example/{example,feature}.proto)."""
    file = descriptor_pb2.FileDescriptorProto(name="example_oracle.proto", package="oracle", syntax="proto3")

    def message(name, fields):
        m = file.message_type.add(name=name)
        for number, (field_name, kind, label, type_name) in enumerate(fields, 1):
            f = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name
        return m

    F = descriptor_pb2.FieldDescriptorProto
    message("BytesList", [("value", F.TYPE_BYTES, F.LABEL_REPEATED, None)])
    message("FloatList", [("value", F.TYPE_FLOAT, F.LABEL_REPEATED, None)])
    message("Int64List", [("value", F.TYPE_INT64, F.LABEL_REPEATED, None)])
    feature = message(
        "Feature",
        [
            ("bytes_list", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".oracle.BytesList"),
            ("float_list", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".oracle.FloatList"),
            ("int64_list", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".oracle.Int64List"),
        ],
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", [("feature", F.TYPE_MESSAGE, F.LABEL_REPEATED, ".oracle.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".oracle.Feature")
    message("Example", [("features", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".oracle.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("oracle.Example"))


FEATURES = {
    "image": [b"\xff\xd8 jpeg bytes \x00\x01"],
    "label": [417],
    "negative": [-3, 2**40],
    "scores": [0.5, -1.25],
    "file_name": [b"ILSVRC2012_val_00000001.JPEG"],
    "empty": [],
}


def test_serialized_examples_parse_with_protobuf_and_back():
    Example = example_message_class()
    oracle = Example.FromString(serialize_example(FEATURES))
    f = oracle.features.feature
    assert list(f["image"].bytes_list.value) == FEATURES["image"]
    assert list(f["label"].int64_list.value) == [417]
    assert list(f["negative"].int64_list.value) == [-3, 2**40]
    assert list(f["scores"].float_list.value) == [0.5, -1.25]
    # And the other way: protobuf's bytes through our parser.
    message = Example()
    message.features.feature["image"].bytes_list.value.append(b"abc")
    message.features.feature["label"].int64_list.value.extend([-7, 9])
    message.features.feature["scores"].float_list.value.extend([0.25, 3.0])
    parsed = parse_example(message.SerializeToString())
    assert parsed["image"] == [b"abc"] and parsed["label"] == [-7, 9]
    np.testing.assert_allclose(parsed["scores"], [0.25, 3.0])


def test_tfds_array_record_source_reads_examples_in_order(tmp_path):
    p = photos()
    images = [encode(p[name], "jpg") for name in ("astronaut", "chelsea", "coffee", "camera", "hubble")]
    labels = [3, 0, 2, 1, 3]
    write_tfds(str(tmp_path), ["n01", "n02", "n03", "n04"], images, labels)
    for path in (str(tmp_path), str(tmp_path / "imagenet2012"), str(tmp_path / "imagenet2012" / "5.1.0")):
        source = TfdsSource(path, "imagenet2012", "validation")
        assert len(source) == 5 and source.classes == ["n01", "n02", "n03", "n04"]
        for i in range(5):
            assert source[i] == {"image": images[i], "label": labels[i], "name": f"val_{i}.JPEG"}
    with pytest.raises(ConfigError, match="imagenet2012-train.array_record"):
        TfdsSource(str(tmp_path), "imagenet2012", "train")
    with pytest.raises(ConfigError, match="holds no TFDS dataset"):
        TfdsSource(str(tmp_path / "nothing"), "imagenet2012", "validation")


def test_image_folder_labels_are_sorted_class_directories(tmp_path):
    p = photos()
    files = {
        "n02/b.png": encode(p["logo"], "png"),
        "n02/a.jpg": encode(p["chelsea"], "jpg"),
        "n01/x.webp": encode(p["coffee"], "webp"),
        "n01/notes.txt": b"not an image",
        "n03/y.JPEG": encode(p["camera"], "jpg"),
    }
    write_folder(str(tmp_path), files)
    source = ImageFolderSource(str(tmp_path))
    assert source.classes == ["n01", "n02", "n03"]
    got = [(os.path.relpath(source[i]["name"], tmp_path), source[i]["label"]) for i in range(len(source))]
    assert got == [("n01/x.webp", 0), ("n02/a.jpg", 1), ("n02/b.png", 1), ("n03/y.JPEG", 2)]
    assert source[1]["image"] == files["n02/a.jpg"]
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderSource(str(tmp_path / "absent"))


def test_data_of_another_layout_is_refused_naming_the_kind_and_argument_to_use(tmp_path):
    """An ImageFolder tree read as TFDS (the ImageNet configs' default) and the other way round, a COCO root
    given to segmentation, an ImageFolder given to zero-shot TFDS: one line naming the kind that fits."""
    from clipjax.config import load_config
    from clipjax.data.classification import classification_source
    from clipjax.data.layouts import recognise
    from clipjax.data.segmentation import segmentation_source
    from clipjax.evals.setup import make_evaluator
    from clipjax.parallel import make_mesh

    image = encode(photos()["chelsea"], "jpg")
    folder, tfds, coco, nyu, empty = (str(tmp_path / name) for name in ("in1k", "tfds", "coco", "nyu", "empty"))
    write_folder(folder, {"train/n01/a.JPEG": image, "val/n01/b.JPEG": image})
    write_tfds(tfds, ["cat"], [image], [0])
    write_folder(coco, {"annotations/instances_val2017.json": b"{}", "val2017/1.jpg": image})
    write_folder(nyu, {"nyu_test.txt": b"", "rgb/1.jpg": image})
    os.makedirs(empty)
    assert [recognise(path) for path in (folder, tfds, coco, nyu, empty)] == ["folder", "tfds", "coco", "nyu", None]

    config = load_config("configs/finetune/imagenet_vit_b16.py", [("data.path", folder)])
    with pytest.raises(ConfigError) as error:
        classification_source(config, "train")
    message = str(error.value)
    assert "\n" not in message and "holds no TFDS dataset 'imagenet2012'" in message
    assert message.endswith(
        f"{folder} looks like an ImageFolder tree (split/<class>/<image>): use --config.data.kind=folder (the "
        "ImageNet finetuning configs: :data=folder, which also sets the split names)"
    )
    assert classification_source(load_config("configs/finetune/imagenet_vit_b16.py:data=folder",
                                             [("data.path", folder)]), "eval").classes == ["n01"]  # fmt: skip
    config = load_config("configs/finetune/imagenet_vit_b16.py:data=folder", [("data.path", tfds)])
    with pytest.raises(ConfigError, match=r"looks like a TFDS data_dir .*:data=tfds"):
        classification_source(config, "train")

    config = load_config("configs/segment/ade20k_vit_b16.py", [("data.path", coco)])
    with pytest.raises(ConfigError, match=r"ADE20K directory .* looks like COCO .*: use --config.data.kind=coco$"):
        segmentation_source(config, "eval")
    config = load_config("configs/evaluate.py", [("eval.zeroshot.kind", "tfds"), ("eval.zeroshot.path", folder)])
    with pytest.raises(
        ConfigError, match=r"looks like an ImageFolder tree .*: use --config.eval.zeroshot.kind=folder$"
    ):
        make_evaluator(None, make_mesh({"data": -1, "fsdp": 1}), config)
    # A kind the reader does not take is named as what the data is, not offered as the fix.
    config = load_config("configs/evaluate.py", [("eval.zeroshot.kind", "tfds"), ("eval.zeroshot.path", coco)])
    with pytest.raises(ConfigError, match=r"looks like COCO .*, which config.eval.zeroshot.kind='tfds' does not read$"):
        make_evaluator(None, make_mesh({"data": -1, "fsdp": 1}), config)
    from clipjax.data.layouts import advice

    assert advice(folder, "webdataset", accepted=("synthetic", "webdataset")).endswith(
        "looks like an ImageFolder tree (split/<class>/<image>), which config.data.kind='webdataset' does not read"
    )
    # A path of the right layout that is broken otherwise keeps its own message alone.
    config = load_config("configs/finetune/imagenet_vit_b16.py:data=folder", [("data.path", empty)])
    with pytest.raises(ConfigError, match=r"image folder .*train does not exist$"):
        classification_source(config, "train")
