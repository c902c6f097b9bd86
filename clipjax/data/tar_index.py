"""Indexes of webdataset tar shards: where each sample's members lie, built once and cached.

A shard is scanned header by header (tar data is skipped, never read) and its members are grouped into
samples by key, webdataset's rule: the key is the member path up to the first dot of its file name and
the rest is the extension ("dir/0001.syn.json" -> key "dir/0001", extension "syn.json"). The index is a
few numpy arrays per shard, cached as `.npz` beside the shard (or in a cache directory when the shard's
directory is read-only) and rebuilt when the shard's size or modification time changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile

import numpy as np

from clipjax.data.npz import read_npz

INDEX_VERSION = 2


@dataclasses.dataclass
class ShardIndex:
    """One shard's samples.

    keys: [n] sample keys, in shard order.
    members: extension -> int64 [n, 2] (data offset, size) of that member per sample, (-1, -1) if absent.
    uids: [n] the "uid" field of each sample's `.json` member ("" if absent or unreadable); filled only
      when indexing with `read_uids`.
    truncated: the file ends inside a member or header, or a header is damaged (the sample it belongs to,
      or the sample before a damaged header, and everything after are left out).
    """

    keys: np.ndarray
    members: dict[str, np.ndarray]
    uids: np.ndarray
    truncated: bool

    def __len__(self) -> int:
        return len(self.keys)


def split_key(name: str) -> tuple[str, str]:
    """("dir/0001", "syn.json") for "dir/0001.syn.json"; ("", "") for names without an extension."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return "", ""
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def scan_shard(path: str, read_uids: bool = False) -> ShardIndex:
    """Reads the tar headers of `path` and groups its regular files into samples.

    Raises:
      OSError / tarfile.TarError: the file cannot be opened or is not a tar archive at all.
    """
    size = os.path.getsize(path)
    keys: list[str] = []
    rows: dict[str, dict[str, tuple[int, int]]] = {}
    truncated = False
    cut_key = None  # the sample of the member the file ends inside, if it does
    with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as archive:
        try:
            for info in archive:
                if not info.isfile():
                    continue
                key, extension = split_key(info.name)
                if info.offset_data + info.size > size:
                    truncated, cut_key = True, key
                    break
                if not key:
                    continue
                if key not in rows:
                    rows[key] = {}
                    keys.append(key)
                rows[key][extension] = (info.offset_data, info.size)
        except tarfile.ReadError:
            truncated = True
        # Past the first header, tarfile ends its iteration silently at a damaged header, a header cut short or
        # a file cut at a header boundary: only end-of-archive zeros where it stopped mean the file was whole.
        truncated = truncated or not _ends_with_zeros(raw, archive.offset)
        if truncated:
            # The sample the damage is in loses what followed; where the damage is a header, that may have been
            # the last sample's next member: leave that sample out whole.
            lost = cut_key if cut_key is not None else (keys[-1] if keys else None)
            if lost in rows:
                keys.remove(lost)
                del rows[lost]
        uids = np.array([_read_uid(raw, rows[k].get("json")) if read_uids else "" for k in keys], dtype=np.str_)
    extensions = sorted({extension for row in rows.values() for extension in row})
    members = {
        extension: np.array([rows[k].get(extension, (-1, -1)) for k in keys], dtype=np.int64).reshape(-1, 2)
        for extension in extensions
    }
    return ShardIndex(np.array(keys, dtype=np.str_), members, uids, truncated)


def _ends_with_zeros(raw, offset: int) -> bool:
    """Whether the file holds a zero block (the end-of-archive marker) at `offset`."""
    raw.seek(offset)
    return raw.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)


def _read_uid(raw, location: tuple[int, int] | None) -> str:
    if location is None:
        return ""
    raw.seek(location[0])
    try:
        value = json.loads(raw.read(location[1]).decode("utf-8")).get("uid", "")
    except (ValueError, AttributeError):
        return ""
    return str(value)


def load_or_build(path: str, cache_dir: str | None, read_uids: bool) -> ShardIndex:
    """The index of shard `path`, from its cache file if still valid, else scanned and cached."""
    stat = os.stat(path)
    stamp = f"{INDEX_VERSION}:{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}:{read_uids}"
    for cache in _cache_paths(path, cache_dir):
        index = _read_cache(cache, stamp)
        if index is not None:
            return index
    index = scan_shard(path, read_uids)
    for cache in _cache_paths(path, cache_dir):
        if _write_cache(cache, stamp, index):
            break
    return index


def _cache_paths(path: str, cache_dir: str | None) -> list[str]:
    """Beside the shard first, then in the cache directory (for read-only dataset directories)."""
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "clipjax", "tar-index")
    return [path + ".clipjax-index.npz", os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}.npz")]


def _read_cache(cache: str, stamp: str) -> ShardIndex | None:
    try:
        with open(cache, "rb") as f:
            saved = read_npz(f.read())  # the read runs in parallel, the parse under read_npz's lock
        if str(saved["stamp"]) != stamp:
            return None
        extensions = [str(e) for e in saved["extensions"]]
        members = {e: saved[f"member_{i}"] for i, e in enumerate(extensions)}
        return ShardIndex(saved["keys"], members, saved["uids"], bool(saved["truncated"]))
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(cache: str, stamp: str, index: ShardIndex) -> bool:
    extensions = sorted(index.members)
    arrays = {f"member_{i}": index.members[e] for i, e in enumerate(extensions)}
    tmp = f"{cache}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(
                f,
                stamp=np.array(stamp),
                keys=index.keys,
                uids=index.uids,
                truncated=np.array(index.truncated),
                extensions=np.array(extensions, dtype=np.str_),
                **arrays,
            )
        os.replace(tmp, cache)  # atomic: concurrent hosts or workers never read a half-written index
        return True
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        return False
