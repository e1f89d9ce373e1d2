"""python -m embed.verify STORE: read every chunk of every group back and report damage.

    python -m embed.verify out/embeddings.zarr
    python -m embed.verify out/embeddings.zarr --encoder vits16_800ep --split val --repair

For each shard marked done, each array's chunk (embeddings, views, labels, paths) must be
there, must decode (every chunk ends in a crc32c checksum, so one flipped byte fails here),
and its rows must be finite. Reported per group, one line per problem: chunks missing
(marked done, never written), chunks that fail to decode or their checksum, rows that are
not finite. `--repair` unmarks the damaged shards, so the next `python -m embed` run writes
them again (an imported group is rebuilt with `embed.from_npy --overwrite` instead).
Exit status 1 when anything was found.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from embed import store
from msnpipe import remote
from msnpipe.remote import location
from msnpipe.runtime import UserError, command
from shard.reader import shard_span

log = logging.getLogger("embed.verify")
ROW_ARRAYS = ("embeddings", "views", "labels", "paths")


@dataclass(frozen=True)
class Problem:
    """One damaged chunk or group: its shard (None: the whole group), its array, what is wrong."""

    shard: int | None
    array: str
    what: str

    def __str__(self) -> str:
        where = "" if self.shard is None else f"shard {self.shard}, "
        return f"{where}{self.array}: {self.what}"


def _chunk_written(group: zarr.Group, store_path: Path | str, name: str, *, shard: int) -> bool:
    """Whether shard `shard`'s chunk of array `name` was ever stored (a file, or an object)."""
    array = group[name]
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    if remote.is_url(store_path):
        return remote.exists(remote.join(str(store_path), group.path, name, key))
    return (Path(store_path) / group.path / name / key).is_file()


def _done_flags(group: zarr.Group) -> tuple[np.ndarray, list[Problem]]:
    """shards_done read chunk by chunk: a chunk that fails to decode counts as done-and-damaged."""
    flags = group["shards_done"]
    done, problems = np.zeros(flags.shape[0], bool), []
    for s in range(flags.shape[0]):
        try:
            done[s] = bool(flags[s])
        except Exception as e:  # the codec's own error: checksum, zstd, truncated
            done[s] = True
            problems.append(Problem(s, "shards_done", f"chunk fails to decode ({_short(e)})"))
    return done, problems


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__


def _check_chunk(group: zarr.Group, store_path: Path, name: str, *, shard: int, lo: int, hi: int,
                 want: int | None) -> Problem | None:
    """One shard's chunk of array `name`: there, decodable, finite, and (`want`: its digest) what
    was written at this place."""
    if not _chunk_written(group, store_path, name, shard=shard):
        return Problem(shard, name, "marked done but never written (chunk missing)")
    try:
        block = np.asarray(group[name][lo:hi])
    except Exception as e:  # the codec's own error: checksum, zstd, truncated
        return Problem(shard, name, f"chunk fails to decode ({_short(e)})")
    if name in ("embeddings", "views") and (bad := len(store.unfit(block))):
        return Problem(shard, name, f"{bad} of {hi - lo} rows are not finite or too large")
    data = [str(p) for p in block] if name == "paths" else block
    if want is not None and store.digest(name, shard, lo, data) != want:
        return Problem(shard, name, "not what was written there (a chunk moved, replaced, or its shape "
                                    "edited)")
    return None


def _digests(group: zarr.Group) -> tuple[np.ndarray | None, list[Problem]]:
    if "digests" not in group:
        log.warning("%s: no digests (made by an older version): where each chunk lies is not checked",
                    group.path)
        return None, []
    try:
        return store.read(group, "digests"), []
    except store.StoreError as e:
        return None, [Problem(None, "digests", str(e))]


def check_group(store_path: Path, encoder: str, split: str) -> tuple[list[Problem], int]:
    """(every problem of one group, how many shards are marked done)."""
    group = store.open_group(store_path, encoder, split)
    if (shape := store.shape_problem(group)) is not None:
        return [Problem(None, "metadata", f"{shape}: the group's zarr.json was edited or damaged")], 0
    done, problems = _done_flags(group)
    digests, more = _digests(group)
    problems += more
    k, n = group["embeddings"].chunks[0], group["embeddings"].shape[0]
    for s in np.flatnonzero(done):
        span = shard_span(int(s), k, n)
        lo, hi = span.start, span.stop
        for column, name in enumerate(store.DIGESTED):
            if name not in group:
                continue
            want = int(digests[s, column]) if digests is not None else None
            if want == -1:
                problems.append(Problem(int(s), name, "marked done without a digest"))
                continue
            problem = _check_chunk(group, store_path, name, shard=int(s), lo=lo, hi=hi, want=want)
            if problem is not None:
                problems.append(problem)
    return problems, int(done.sum())


def repair(store_path: Path, encoder: str, split: str, *, problems: list[Problem]) -> list[int]:
    """Unmark the damaged shards (holding the group's writer lock); return them."""
    shards = sorted({p.shard for p in problems})
    with store.writer_lock(store_path, encoder, split):
        group = store.open_group(store_path, encoder, split, mode="a")
        for s in shards:
            group["shards_done"][s] = False
        store.mark_complete_if_done(group)
    return shards


def _groups(path: Path, encoder: str | None, split: str | None) -> list[tuple[str, str, bool]]:
    if not store.store_exists(path):
        raise UserError(f"{path}: not a Zarr store")
    groups = [(e, s, whole) for e, s, whole in store.group_folders(path)
              if encoder in (None, e) and split in (None, s)]
    if not groups:
        raise UserError(f"{path}: no group matches --encoder {encoder} --split {split}")
    return groups


def _report(enc: str, spl: str, problems: list[Problem]) -> None:
    for p in problems[:50]:
        log.error("%s/%s: %s", enc, spl, p)
    if len(problems) > 50:
        log.error("%s/%s: and %d more problems", enc, spl, len(problems) - 50)


def verify(path: Path, encoder: str | None, split: str | None, *, fix: bool) -> bool:
    """Check (and with `fix`, repair) the chosen groups; return whether all were sound."""
    sound = True
    for enc, spl, whole in _groups(path, encoder, split):
        if not whole:
            log.error("%s/%s: zarr.json is missing: the group's metadata (what made its rows) is lost, which "
                      "--repair cannot restore; remove %s and embed (or import) it again", enc, spl,
                      f"{path}/{enc}/{spl}")
            sound = False
            continue
        try:
            problems, done = check_group(path, enc, spl)
        except store.StoreError as e:  # a garbled zarr.json
            log.error("%s", e)
            sound = False
            continue
        _report(enc, spl, problems)
        if not problems:
            bare = "paths" not in store.open_group(path, enc, spl)
            log.info("%s/%s: ok, every chunk of the %d shards marked done read back as written%s", enc, spl,
                     done, " (no paths: imported without filepaths, which is valid)" if bare else "")
            continue
        sound = False
        if fix and any(p.shard is not None for p in problems):
            shards = repair(path, enc, spl, problems=[p for p in problems if p.shard is not None])
            hint = store.rerun_hint(store.open_group(path, enc, spl))
            log.warning("%s/%s: unmarked shards %s; %s", enc, spl, shards, hint.replace("to finish it", "to "
                        "write them again"))
    return sound


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embed.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    p.add_argument("--encoder", default=None, help="only this encoder's groups")
    p.add_argument("--split", default=None, help="only this split's groups")
    p.add_argument("--repair", action="store_true",
                   help="unmark damaged shards so the next embed run rewrites them")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Verify the store; exit status 1 on any problem."""
    sound = lambda a: 0 if verify(a.store, a.encoder, a.split, fix=a.repair) else 1  # noqa: E731
    return command(_parse, sound, argv, logger="embed")


if __name__ == "__main__":
    sys.exit(main())
