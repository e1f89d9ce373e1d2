"""Shards published to object storage (`python -m shard SRC s3://bucket/shards`): built in a
local stage exactly as a local run builds them, each uploaded as soon as it is written, the
manifest last.

    publisher = Publisher("s3://bucket/shards/val", stage=Path("~/.cache/.../.stage/val"))
    publisher.publish(record, tar_path)   # upload in the background; the local copy goes once up
    publisher.commit(samples_tsv, manifest_json)   # every shard up, then samples.tsv, then manifest

A store has no rename, so the manifest (every tar's size and sha256) is the commit record:
readers trust only a split whose manifest is there, and only the objects it lists. A tar is one
object, whole or absent (a multipart upload appears when it completes), so a kill leaves at
most some whole tars and no manifest; the rerun rebuilds what its stage lacks, uploads what the
store lacks (a tar of the right size is taken as up: the stage's records say what it must
hold), and then commits. The bytes are the local run's, byte for byte.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from msnpipe import remote
from shard.writer import ShardFile

log = logging.getLogger("shard")
UPLOADS = 4  # shards uploading at once (the stage holds at most these and those being written)


class Publisher:
    """Uploads of one split's shards to `url`, from the stage folder where they are written."""

    def __init__(self, url: str, stage: Path):
        self.url, self.stage = url, stage
        self.remote = remote.sizes(url)  # what an earlier run left there: one listing
        self.pool = ThreadPoolExecutor(UPLOADS, thread_name_prefix="upload")
        self.pending: list[Future] = []

    def has(self, rec: ShardFile) -> bool:
        """Whether shard `rec` is already up, whole (its tar of the recorded size, its index)."""
        return self.remote.get(rec.tar) == rec.bytes and rec.idx in self.remote

    def _upload(self, rec: ShardFile, tar: Path) -> None:
        idx = tar.with_suffix(".idx")
        remote.put_file(idx, remote.join(self.url, rec.idx))  # the index first: a tar implies its index
        remote.put_file(tar, remote.join(self.url, rec.tar))
        self.remote[rec.idx], self.remote[rec.tar] = idx.stat().st_size, rec.bytes
        tar.unlink()
        idx.unlink()

    def publish(self, rec: ShardFile, tar: Path) -> None:
        """Shard `rec`, written at `tar` (and its .idx), on its way up, unless it is there."""
        if self.has(rec):
            tar.unlink(missing_ok=True)
            tar.with_suffix(".idx").unlink(missing_ok=True)
            return
        while len(self.pending) >= UPLOADS:  # at most UPLOADS shards in the stage waiting to go up
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._upload, rec, tar))

    def drain(self) -> None:
        """Wait for every upload; the first failure is raised."""
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pending = []

    def commit(self, samples: Path, manifest: Path) -> None:
        """Every shard up, then samples.tsv, then the manifest: the split is published."""
        self.drain()
        remote.put_file(samples, remote.join(self.url, samples.name))
        remote.put_file(manifest, remote.join(self.url, manifest.name))
        log.info("%s: published", self.url)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
