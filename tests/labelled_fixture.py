"""TFDS array_record datasets and ImageFolder trees written as the real tools lay them out."""

import os

from array_record.python.array_record_module import ArrayRecordWriter

from clipjax.data.tf_example import serialize_example


def write_tfds(root, names, images, labels, split="validation"):
    """`root/imagenet2012/5.1.0/` as TFDS prepares it: 2 array_record shards of `split` and the label file."""
    directory = os.path.join(root, "imagenet2012", "5.1.0")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "label.labels.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    half = len(images) // 2
    for shard, (start, stop) in enumerate([(0, half), (half, len(images))]):
        path = os.path.join(directory, f"imagenet2012-{split}.array_record-0000{shard}-of-00002")
        writer = ArrayRecordWriter(path, "group_size:1")
        for i in range(start, stop):
            record = {"image": [images[i]], "label": [labels[i]], "file_name": [f"{split[:3]}_{i}.JPEG".encode()]}
            writer.write(serialize_example(record))
        writer.close()
    return directory


def write_folder(root, files):
    for relative, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        with open(os.path.join(root, relative), "wb") as f:
            f.write(data)
