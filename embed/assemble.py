"""Rows arrive by sample index, in any order and across batches; a shard is handed on to be
written as soon as all of its rows are in, and never before.

    asm = ShardAssembler(split, done=store.done_shards(group), write=on_whole_shard)
    asm.add(rows, indices)   # rows [B, D], indices [B] (-1: padding), views [B, K, D] optional
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shard.reader import Split, shard_of

WriteShard = Callable[[int, np.ndarray, np.ndarray | None], None]  # (shard, rows, views)


class ShardAssembler:
    """Per-shard buffers of rows [n, D] (and views [n, K, D]) filled by sample index."""

    def __init__(self, split: Split, done: np.ndarray, write: WriteShard):
        self.k, self.sizes = split.samples_per_shard, [s.num_samples for s in split.shards]
        self.done, self.write = done.copy(), write
        self.rows: dict[int, np.ndarray] = {}
        self.views: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}

    def add(self, rows: np.ndarray, indices: np.ndarray, views: np.ndarray | None = None) -> None:
        """Buffer each row at its place in its shard; write every shard this batch made whole."""
        for j, index in enumerate(indices):
            if index < 0:
                continue  # padding
            s, at = shard_of(index, self.k)
            if self.done[s]:
                continue  # a shard written already
            self.rows.setdefault(s, np.empty((self.sizes[s], rows.shape[1]), np.float32))[at] = rows[j]
            if views is not None:
                buf = self.views.setdefault(s, np.empty((self.sizes[s], *views.shape[1:]), np.float32))
                buf[at] = views[j]
            self.filled[s] = self.filled.get(s, 0) + 1
            if self.filled[s] == self.sizes[s]:
                self.write(s, self.rows.pop(s), self.views.pop(s, None))
                del self.filled[s]
                self.done[s] = True

    def unfinished(self) -> list[int]:
        """Shards with some rows buffered but not all: after a full pass, a reading error."""
        return sorted(self.rows)
