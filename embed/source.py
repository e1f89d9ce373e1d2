"""The shards one rank embeds, checked against their manifest: before anything is decoded,
each tar's size and first header (a stat and a 512-byte read; for a remote split, one listing
of sizes); before a shard's rows are written, its sha256 (hashed in a background thread, a few
shards ahead of the decoder, or while a remote tar is fetched).

    refuse_changed(split)                 # a ShardFormatError now if any tar changed size
    shards = shards_of(split, cache_bytes=8 << 30)   # CheckedShards, or RemoteShards for a URL
    shards.start(mine)                    # the shards this rank decodes, in order
    for group in shards.groups(mine): ... # the shards whose tars are on this machine now
    shards.verified(i)                    # before shard i's rows are written: its bytes are the manifest's
    shards.close()

A remote split's tars are fetched into its local cache (shard.reader.default_cache, or
--cache) group by group: a group holds at most half of `cache_bytes`, the next one is fetched
and checked while this one is embedded, and a group's tars are removed once the decoder has
read them, so a run holds at most `cache_bytes` of tars whatever the split's size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from msnpipe import remote
from shard.reader import ShardFormatError, Split

log = logging.getLogger("embed")
CHUNK = 8 << 20  # bytes read at a time from a remote tar

AHEAD = 2  # shards hashed ahead of the one being written: read while still in the page cache


def _refuse(split: Split, problems: list[str]) -> None:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise ShardFormatError(f"{len(problems)} shard(s) differ from {split.url or split.dir}/manifest.json: "
                           f"{'; '.join(problems[:3])}{more}. The split changed after it was made; "
                           "check it with python -m shard.verify, or shard it again")


def refuse_changed(split: Split) -> None:
    """A ShardFormatError naming the tars whose size or first header is not the manifest's (a
    remote split: whose size is not, from one listing; their bytes are checked as fetched)."""
    if split.url:
        there = remote.sizes(split.url)
        problems = [f"{split.where(i)}: " + (f"{there[e.tar]} bytes, the manifest says {e.bytes}"
                                             if e.tar in there else "missing")
                    for i, e in enumerate(split.shards) if there.get(e.tar) != e.bytes]
    else:
        problems = [p for i in range(len(split.shards)) if (p := split.tar_problem(i)) is not None]
    if problems:
        _refuse(split, problems)


class CheckedShards:
    """The sha256 of each shard this rank decodes, checked before its rows are written."""

    def __init__(self, split: Split):
        self.split, self.todo = split, deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        self.hashing: dict[int, Future] = {}
        self.done: set[int] = set()

    def start(self, ids: list[int]) -> None:
        """Hash shards `ids`, in this order, a few ahead of the decoder."""
        self.todo = deque(ids)
        self._ahead()

    def _ahead(self) -> None:
        while self.todo and len(self.hashing) < AHEAD:
            i = self.todo.popleft()
            self.hashing[i] = self.pool.submit(self.split.tar_problem, i, content=True)

    def verified(self, i: int) -> None:
        """Return once shard i's sha256 is the manifest's; a ShardFormatError naming it otherwise."""
        if i in self.done:
            return
        if i not in self.hashing:  # decoded out of the expected order: hash it now
            self.todo.remove(i)
            self.hashing[i] = self.pool.submit(self.split.tar_problem, i, content=True)
        problem = self.hashing.pop(i).result()
        self._ahead()
        if problem is not None:
            _refuse(self.split, [problem])
        self.done.add(i)

    def groups(self, ids: list[int]) -> Iterator[list[int]]:
        """A local split's tars are all here: one group."""
        if ids:
            yield ids

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RemoteShards:
    """The tars of a remote split, fetched into its cache folder (split.dir) group by group and
    checked (sha256) as they arrive; removed once decoded."""

    def __init__(self, split: Split, cache_bytes: int):
        self.split, self.budget = split, max(1, cache_bytes // 2)  # this group, and the next one coming
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="fetch")
        self.done: set[int] = set()

    def start(self, ids: list[int]) -> None:
        pass  # fetched by groups()

    def _fetch(self, i: int) -> None:
        """Tar i and its index into the cache, the tar's sha256 checked while it is written."""
        entry, url = self.split.shards[i], self.split.where(i)
        tar, idx = self.split.dir / entry.tar, self.split.dir / entry.idx
        remote.get_file(f"{self.split.url}/{entry.idx}", idx)
        part = tar.with_name(tar.name + ".part")

        def download() -> str:
            fs, path = remote.filesystem(url)
            digest = hashlib.sha256()
            with fs.open(path, "rb", block_size=CHUNK) as src, open(part, "wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            return digest.hexdigest()

        try:
            digest = remote.retried(url, download)
        except FileNotFoundError:
            raise ShardFormatError(f"{url}: missing; the split changed after it was made: shard it "
                                   "again") from None
        if digest != entry.sha256 or part.stat().st_size != entry.bytes:
            part.unlink()
            _refuse(self.split, [f"{url}: sha256 {digest[:12]}…, the manifest says {entry.sha256[:12]}…"])
        os.replace(part, tar)
        self.done.add(i)

    def _fetch_all(self, ids: list[int]) -> None:
        for i in ids:
            self._fetch(i)

    def _groups_of(self, ids: list[int]) -> list[list[int]]:
        groups, size = [[]], 0
        for i in ids:
            b = self.split.shards[i].bytes
            if groups[-1] and size + b > self.budget:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += b
        return [g for g in groups if g]

    def groups(self, ids: list[int]) -> Iterator[list[int]]:
        """Each group once its tars are here, the next one fetched meanwhile; a group's tars
        are removed when the next is asked for (the decoder has read them by then)."""
        groups = self._groups_of(ids)
        if not groups:
            return
        self.split.dir.mkdir(parents=True, exist_ok=True)
        coming = self.pool.submit(self._fetch_all, groups[0])
        for k, group in enumerate(groups):
            coming.result()
            if k + 1 < len(groups):
                coming = self.pool.submit(self._fetch_all, groups[k + 1])
            log.info("%s: %d shards here (%.0f MB), %d groups left", self.split.url, len(group),
                     sum(self.split.shards[i].bytes for i in group) / 1e6, len(groups) - k - 1)
            yield group
            for i in group:
                (self.split.dir / self.split.shards[i].tar).unlink(missing_ok=True)

    def verified(self, i: int) -> None:
        """Shard i's bytes were checked when it was fetched."""
        if i not in self.done:
            raise ShardFormatError(f"{self.split.where(i)}: written before it was fetched and checked")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def shards_of(split: Split, *, cache_bytes: int) -> CheckedShards | RemoteShards:
    """The checked shards of a split: read in place when local, fetched when remote."""
    return RemoteShards(split, cache_bytes) if split.url else CheckedShards(split)
