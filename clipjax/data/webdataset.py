"""Random access into webdataset tar shards (DataComp, and DataCompDR joined by uid), for grain.

`WebDatasetSource(shards)` numbers the samples of all shards in order; `source[i]` reads only the
members of sample i, with positioned reads into the shard (never the whole shard). With
`synthetic_shards` (DataCompDR: `{key}.syn.json`, `{key}.paug.json`, `{key}.npz`, `{key}.json`), each
image shard is joined with the synthetic shard of the same file name, sample by sample, on the `uid`
field of their `.json` members.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import glob
import hashlib
import os
import re
import sys
import tarfile
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from clipjax.data.tar_index import ShardIndex, load_or_build
from clipjax.errors import UserError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SYNTHETIC_EXTENSIONS = ("syn.json", "paug.json", "npz")
_OPEN_FILES = 64  # per reading thread; shards are opened lazily and closed least-recently-used first


def expand_shards(pattern: str) -> list[str]:
    """Shard paths from brace ranges and lists ("a-{000..099}.tar", "{x,y}.tar") and shell globs, sorted
    within each pattern; several patterns may be joined with "::"."""
    paths: list[str] = []
    for part in pattern.split("::"):
        for expanded in _expand_braces(part):
            matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            paths.extend(matches)
    return paths


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end() :], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first)
        options = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in _expand_braces(head + option + tail)]


class WebDatasetSource:
    """grain RandomAccessDataSource over tar shards.

    `source[i]` returns {"__key__": str, "__shard__": str, extension: bytes, ...} with the sample's members;
    joined synthetic members appear under their extensions ("syn.json", ...) when the join found them.

    Args:
      shards: the image shards, in order.
      synthetic_shards: DataCompDR shards; each is paired with the image shard of the same file name.
      cache_dir: where indexes go when a shard's directory is read-only.
      log: where a shard that cannot be opened, or is truncated, is named.
    """

    def __init__(
        self,
        shards: list[str],
        synthetic_shards: list[str] | None = None,
        cache_dir: str | None = None,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    ) -> None:
        join = synthetic_shards is not None
        indexes = _index_all(shards, cache_dir, read_uids=join, log=log)
        self._shards = [path for path in shards if indexes[path] is not None]
        self._indexes = [indexes[path] for path in self._shards]
        self._synthetic: list[tuple[str, ShardIndex, dict[str, int]] | None] = [None] * len(self._shards)
        self.missing_images = 0  # synthetic records whose uid has no image sample
        if join:
            by_name = {os.path.basename(path): path for path in synthetic_shards}
            synthetic = _index_all(list(by_name.values()), cache_dir, read_uids=True, log=log)
            for n, path in enumerate(self._shards):
                partner = by_name.get(os.path.basename(path))
                if partner is None or synthetic[partner] is None:
                    log(f"data: no synthetic shard named {os.path.basename(path)} to join with {path}")
                    continue
                index = synthetic[partner]
                rows = {uid: row for row, uid in enumerate(index.uids) if uid}
                self._synthetic[n] = (partner, index, rows)
                self.missing_images += len(set(rows) - set(self._indexes[n].uids))
            if self.missing_images:
                log(f"data: {self.missing_images} synthetic records have no image with their uid; they are not used")
        self._starts = np.cumsum([0] + [len(index) for index in self._indexes]).tolist()
        # grain reads with several threads: each keeps its own open files, so none closes another's.
        self._local = threading.local()

    def __len__(self) -> int:
        return self._starts[-1]

    def fingerprint(self) -> np.ndarray:
        """uint32 [4]: a digest of the shards read, their sample counts and synthetic partners, which number
        every sample: hosts that disagree on it would read overlapping data."""
        lines = [
            f"{path}\t{len(index)}\t{partner[0] if partner else ''}"
            for path, index, partner in zip(self._shards, self._indexes, self._synthetic)
        ]
        digest = hashlib.sha256("\n".join(lines).encode()).digest()
        return np.frombuffer(digest[:16], np.uint32).copy()

    def __repr__(self) -> str:
        return f"WebDatasetSource({len(self._shards)} shards, {len(self)} samples)"

    def __getstate__(self) -> dict[str, Any]:
        # File descriptors do not cross into grain's worker processes; each worker opens its own.
        return {key: value for key, value in self.__dict__.items() if key != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _local=threading.local())

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        n = bisect.bisect_right(self._starts, index) - 1
        row = index - self._starts[n]
        shard, shard_index = self._shards[n], self._indexes[n]
        sample: dict[str, Any] = {"__key__": str(shard_index.keys[row]), "__shard__": shard}
        sample.update(self._read_members(shard, shard_index, row))
        joined = self._synthetic[n]
        if joined is not None:
            partner, partner_index, rows = joined
            partner_row = rows.get(str(shard_index.uids[row]))
            if partner_row is not None:
                members = self._read_members(partner, partner_index, partner_row)
                sample.update({e: members[e] for e in SYNTHETIC_EXTENSIONS if e in members})
        return sample

    def _read_members(self, path: str, index: ShardIndex, row: int) -> dict[str, bytes]:
        fd = self._open(path)
        out = {}
        for extension, locations in index.members.items():
            offset, size = locations[row]
            if offset >= 0:
                out[extension] = os.pread(fd, int(size), int(offset))
        return out

    def _open(self, path: str) -> int:
        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = OrderedDict()
        fd = files.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(files) >= _OPEN_FILES:
                os.close(files.popitem(last=False)[1])
        files[path] = fd
        return fd


# A shard that is not a tar, or not there, stays so: it is left out. Any other error reading it (EIO, ESTALE,
# a timeout of network storage) may pass, and leaving the shard out would renumber every later sample (a resumed
# run, or another host, would read other samples under the same numbers): retried, then the run stops.
_PERMANENT = (tarfile.TarError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_RETRY_DELAYS_S = (1.0, 4.0)


def _index_all(paths: list[str], cache_dir: str | None, read_uids: bool, log) -> dict[str, ShardIndex | None]:
    """Indexes shards in parallel; a shard that is not a tar or not there is named in the log and maps to None.

    Raises:
      UserError: a shard kept failing with another OSError (after retries).
    """

    def one(path: str) -> ShardIndex | None:
        for delay in (*_RETRY_DELAYS_S, None):
            try:
                index = load_or_build(path, cache_dir, read_uids)
                break
            except _PERMANENT as e:
                log(f"data: cannot open shard {path}: {e}; skipping it")
                return None
            except OSError as e:
                if delay is None:
                    raise UserError(
                        f"data: shard {path} cannot be read ({e}); leaving it out would renumber the samples after "
                        "it: fix the storage, or remove the shard from config.data.path"
                    ) from None
                log(f"data: reading shard {path} failed ({e}); retrying in {delay:.0f} s")
                time.sleep(delay)
        if index.truncated:
            log(f"data: shard {path} is truncated; using its {len(index)} complete samples")
        return index

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
        return dict(zip(paths, pool.map(one, paths)))
