"""The shards one rank embeds, checked against their manifest: before anything is decoded,
each tar's size and first header (a stat and a 512-byte read); before a shard's rows are
written, its sha256 (hashed in a background thread, a few shards ahead of the decoder).

    refuse_changed(split)                 # a ShardFormatError now if any tar changed size
    shards = CheckedShards(split)
    shards.start(mine)                    # the shards this rank decodes, in order
    shards.verified(i)                    # before shard i's rows are written: its bytes are the manifest's
    shards.close()
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from shard.reader import ShardFormatError, Split

AHEAD = 2  # shards hashed ahead of the one being written: read while still in the page cache


def _refuse(split: Split, problems: list[str]) -> None:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise ShardFormatError(f"{len(problems)} shard(s) differ from {split.dir}/manifest.json: "
                           f"{'; '.join(problems[:3])}{more}. The split changed after it was made; "
                           "check it with python -m shard.verify, or shard it again")


def refuse_changed(split: Split) -> None:
    """A ShardFormatError naming the tars whose size or first header is not the manifest's."""
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

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
