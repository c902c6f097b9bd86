"""Fixed subsets of a training source, for data-scaling studies (`config.data.subset_size=N`).

The subset of size N is the first N records of a fixed order of the source's records, so subsets are nested
(the 1.28M subset lies inside the 12.8M one) and the same on every host, every run and every resume:

- Sources whose records are independent draws (the built-in scenes: scene i is drawn from its own seeded
  generator) are taken in their own order: records 0..N-1.
- Any other source (webdataset shards, TFDS, an image folder, whose records come sorted by shard, class or
  file name) is taken in a seeded pseudo-random order of all its records, `config.data.subset_seed`. The order
  is grain's `index_shuffle` bijection, computed per record, so no permutation of a billion records is ever
  held in memory.

The order is over the records the source holds: a shard left out (unreadable) changes which records a subset
of a webdataset holds. Training repeats the subset for as many epochs as its steps need, each epoch in a
fresh order (clipjax/data/batching.py).
"""

from __future__ import annotations

from typing import Any

import grain
from ml_collections import ConfigDict

from clipjax.errors import ConfigError

# Rounds of grain's Feistel network: its own global shuffle's choice.
_ROUNDS = 4


class SubsetSource:
    """Random-access view of the first `size` records of `source` in the order the module docstring describes.

    `subset[i]` is `source[record(i)]`; `record(i)` is i for a source with `records_are_independent`, else the
    record at position i of the seeded order.
    """

    def __init__(self, source: Any, size: int, seed: int) -> None:
        total = len(source)
        if not 1 <= size <= total:
            raise ConfigError(
                f"config.data.subset_size={size} must lie in 1..{total}, the records the training data holds"
            )
        self._source, self._size, self._seed, self._total = source, size, seed, total
        self._in_order = getattr(source, "records_are_independent", False)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        order = "in order" if self._in_order else f"order seed {self._seed}"
        return f"SubsetSource({self._size} of {self._total} records, {order}, of {self._source!r})"

    def record(self, index: int) -> int:
        """The source record at position `index` (0 <= index < len(self)) of the subset."""
        if not 0 <= index < self._size:
            raise IndexError(f"index {index} out of range for a subset of {self._size} records")
        if self._in_order:
            return index
        return int(grain.experimental.index_shuffle(index, max_index=self._total - 1, seed=self._seed, rounds=_ROUNDS))

    def __getitem__(self, index: int) -> Any:
        return self._source[self.record(index)]


def training_subset(source: Any, data: ConfigDict) -> Any:
    """`source` itself, or its `SubsetSource` of `data.subset_size` records (seeded by `data.subset_seed`).

    Raises:
      ConfigError: a subset larger than the source.
    """
    if data.subset_size is None:
        return source
    return SubsetSource(source, data.subset_size, data.subset_seed)
