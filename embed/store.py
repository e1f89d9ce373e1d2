"""The embedding store: one Zarr (format 3) group per encoder and split.

    STORE/<encoder>/<split>/embeddings   float32 [N, D] (float16 on request); row i = sample i
    STORE/<encoder>/<split>/views        float32 [N, K, D], K augmented views (with --views K)
    STORE/<encoder>/<split>/labels       int32 [N] (multi-label splits: int8 multi-hot [N, C])
    STORE/<encoder>/<split>/paths        str [N], source path relative to the split folder
                                         (absent for imports without filepaths)
    STORE/<encoder>/<split>/digests      int64 [S, 4], per shard a crc32 of its embeddings, views,
                                         labels and paths with the shard's place (-1: no such array)
    STORE/<encoder>/<split>/shards_done  bool [S], one chunk per shard: set once its rows are written
    attributes: encoder, architecture, kind, weights and sha256, preprocessing, precision,
                device, batch size, versions, runs, shards manifest sha256, identity, layout, complete

Row chunks are aligned with shards, so processes that own different shards never share a
chunk, and `shards_done` and `digests` have one chunk per shard for the same reason. Every chunk
ends in a crc32c checksum, so a flipped byte fails on read instead of shifting a value; each
shard's digest covers its data together with its shard number and first row, so a chunk moved to
another place, or replaced by another valid chunk, fails too. A shard's rows are cast to the
stored dtype and checked (finite, and below MAX_ABS, whose square float32 still holds) before its
rows, labels, paths and digest are written, and it is marked done last; rows of a shard not
marked done are never read. A group is created whole under a temporary name (with its rows, for
an import) and swapped into place, so it exists whole or not at all; one process writes it at a
time (`writer_lock`).

The next stage reads a store only through `open_embeddings`; whole reads are checked against
the digests, a chunk that fails to decode is a StoreError naming it:

    from embed.store import open_embeddings
    e = open_embeddings("out/embeddings.zarr", "vits16_800ep", "val")
    e.embeddings[:1000]   # zarr array, read in slices, unchecked;  e.labels  [N] int32 (checked)
    for start, block in e.row_blocks(): ...   # [b, D] float32, checked
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from msnpipe import remote
from msnpipe.files import exclusive, naming, plain_name
from msnpipe.runtime import UserError
from shard.reader import shard_span

if TYPE_CHECKING:  # zarr is imported where a store is opened, so command lines start fast
    import zarr

DTYPES = ("float32", "float16")
LOCKS, TMP = ".locks", ".tmp"  # beside the groups, never inside one
DIGESTED = ("embeddings", "views", "labels", "paths")  # the columns of `digests`
MAX_ABS = 1e18  # rows at or above it are refused: their squares overflow float32 (norms, kNN)


class StoreError(UserError):
    """A store that is missing, incomplete, damaged, or was built from other inputs or settings."""


@dataclass(frozen=True)
class Layout:
    """The shape of one group: N rows of width D, cut into shards of K rows."""

    num_samples: int
    dim: int
    samples_per_shard: int
    num_shards: int
    dtype: str = "float32"
    views: int = 0  # K augmented views per sample (0: no views array)
    label_columns: int = 0  # C for multi-hot labels [N, C]; 0: class indices [N]
    paths: bool = True  # whether the group holds source paths


def _codecs() -> dict:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {"compressors": (ZstdCodec(), Crc32cCodec())}  # crc32c of the compressed bytes


def _damaged(where: str, e: Exception) -> StoreError:
    first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return StoreError(f"{where}: damaged ({type(e).__name__}: {first}); check the store with python -m "
                      "embed.verify STORE, and --repair it or rebuild the group")


def _open_root(store: Path | str, mode: str) -> zarr.Group:
    import zarr

    # every written chunk is stored, even one equal to the fill value (a shard of empty paths), so
    # a missing chunk always means one never written; zarr keeps this per process, not per array
    zarr.config.set({"array.write_empty_chunks": True})
    try:
        return zarr.open_group(str(store), mode=mode, zarr_format=3)
    except ValueError as e:  # a garbled zarr.json: JSON, or metadata zarr cannot read
        raise _damaged(f"{store}/zarr.json", e) from None


def _named(encoder: str, split: str) -> tuple[str, str]:
    """A group is STORE/<encoder>/<split>: both must be plain names."""
    return plain_name(encoder, "--encoder"), plain_name(split, "--split")


def _meta_exists(store: Path | str, *parts: str) -> bool:
    """Whether STORE/<parts>/zarr.json exists (a file, or an object of a remote store)."""
    if remote.is_url(store):
        return remote.exists(remote.join(str(store), *parts, "zarr.json"))
    return remote.local(store).joinpath(*parts, "zarr.json").is_file()


def store_exists(store: Path | str) -> bool:
    """Whether STORE is a Zarr store (its root zarr.json is there)."""
    return _meta_exists(store)


def writer_lock(store: Path | str, encoder: str, split: str) -> AbstractContextManager:
    """Hold the one-writer lock of group (encoder, split); a second writer gets Busy naming us.
    On a remote store, a lock object made by a conditional put (msnpipe.remote.RemoteLock)."""
    _named(encoder, split)
    if remote.is_url(store):
        return remote.RemoteLock(remote.join(str(store), LOCKS, f"{encoder}--{split}.lock"),
                                 f"{store}: {encoder}/{split}")
    folder = remote.local(store) / LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    return exclusive(folder / f"{encoder}--{split}.lock", f"{store}: {encoder}/{split}")


def _build(path: Path, layout: Layout, attrs: dict) -> zarr.Group:
    """Every array of a new group at `path`, nothing written or done yet."""
    g = _open_root(path, "w")
    n, k, d = layout.num_samples, max(1, layout.samples_per_shard), layout.dim
    g.create_array("embeddings", shape=(n, d), chunks=(k, d), dtype=layout.dtype, fill_value=np.nan,
                   **_codecs())
    if layout.views:
        g.create_array("views", shape=(n, layout.views, d), chunks=(k, layout.views, d),
                       dtype=layout.dtype, fill_value=np.nan, **_codecs())
    c = layout.label_columns
    g.create_array("labels", shape=(n, c) if c else (n,), chunks=(k, c) if c else (k,),
                   dtype="int8" if c else "int32", fill_value=-1, **_codecs())
    if layout.paths:
        g.create_array("paths", shape=(n,), chunks=(k,), dtype=str, **_codecs())
    g.create_array("digests", shape=(layout.num_shards, len(DIGESTED)), chunks=(1, len(DIGESTED)),
                   dtype="int64", fill_value=-1, **_codecs())
    g.create_array("shards_done", shape=(layout.num_shards,), chunks=(1,), dtype=bool,
                   fill_value=False, **_codecs())
    g.attrs.update(attrs | {"complete": False, "layout": asdict(layout)})
    return g


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where it is not there."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_cwd, exchange = -100, 2
        return libc.renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0
    except (AttributeError, OSError):
        return False


def _publish(tmp: Path, final: Path) -> None:
    """Put the group built at `tmp` in place of `final` (absent, or replaced whole)."""
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)  # now the old group
    else:  # two renames; a kill between them leaves `--replaced`, put back by the next create
        old = tmp.with_name(tmp.name + "--replaced")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)


def _clean_stale(tmp_dir: Path, encoder: str, split: str, final: Path) -> None:
    """Remove what killed creators left in STORE/.tmp; a group caught between two renames goes back."""
    for stale in sorted(tmp_dir.glob(f"{encoder}--{split}--*")):
        if stale.name.endswith("--replaced") and not final.exists():
            os.rename(stale, final)
        else:
            shutil.rmtree(stale)


def create_group(store: Path | str, encoder: str, split: str, *, layout: Layout, attrs: dict,
                 overwrite: bool = False, fill: Callable[[zarr.Group], None] | None = None) -> zarr.Group:
    """Create group (encoder, split) atomically: built under STORE/.tmp, `fill(group)` writing its
    rows there (for an import), then swapped into place. An existing group is an error unless
    `overwrite`, which replaces it whole. Call it holding `writer_lock`. A remote store has no
    rename: the group is built in place (_create_in_place)."""
    _named(encoder, split)
    if remote.is_url(store):
        return _create_in_place(str(store), encoder, split, layout=layout, attrs=attrs, overwrite=overwrite,
                                fill=fill)
    root = _open_root(store, "a")
    root.require_group(encoder)
    final = Path(store) / encoder / split
    tmp = Path(store) / TMP / f"{encoder}--{split}--{os.getpid()}"
    _clean_stale(tmp.parent, encoder, split, final)
    if final.exists() and not overwrite:
        if not (final / "zarr.json").is_file():
            raise StoreError(f"{final}: its zarr.json is missing, so what made its rows is unknown; remove "
                             "the folder and run again")
        raise StoreError(f"{store}: {encoder}/{split} already exists; pass --overwrite to replace it")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with naming(tmp):
        g = _build(tmp, layout, attrs)
        if fill is not None:
            fill(g)
        _publish(tmp, final)
    return open_group(store, encoder, split, mode="a")


def _create_in_place(store: str, encoder: str, split: str, *, layout: Layout, attrs: dict, overwrite: bool,
                     fill: Callable[[zarr.Group], None] | None) -> zarr.Group:
    """create_group on a store without rename: an existing group (unless `overwrite`, which
    removes it first), then every array, then `fill`, and only then its attributes, identity among
    them: until they are written the group is not whole (is_whole), and the next create replaces
    it. A reader never takes a half-made group for a finished one."""
    url = remote.join(store, encoder, split)
    if remote.exists(url):  # a group, or what a killed creation left of one
        group = open_group(store, encoder, split, mode="a")
        if group is not None and is_whole(group) and not overwrite:
            raise StoreError(f"{store}: {encoder}/{split} already exists; pass --overwrite to replace it")
        remote.remove(url, recursive=True)
    root = _open_root(store, "a")
    root.require_group(encoder)
    g = _build(url, layout, {})
    if fill is not None:
        fill(g)
    g.attrs.update(attrs | {"complete": g.attrs.get("complete", False), "layout": asdict(layout)})
    return open_group(store, encoder, split, mode="a")


def open_group(store: Path | str, encoder: str, split: str, *, mode: str = "r") -> zarr.Group | None:
    """The group of (encoder, split), or None when the store or the group does not exist."""
    _named(encoder, split)
    if not _meta_exists(store, encoder, split):
        return None
    root = _open_root(store, mode)
    try:
        return root[f"{encoder}/{split}"]
    except (ValueError, KeyError) as e:
        raise _damaged(f"{store}/{encoder}/{split}/zarr.json", e) from None


def is_whole(group: zarr.Group) -> bool:
    """Whether a group was finished being created (groups of older versions could be half-made)."""
    return "identity" in group.attrs and "shards_done" in group


def identity_mismatch(group: zarr.Group, identity: dict) -> list[str]:
    """The settings in which `group` differs from `identity`, as 'key: old != new'."""
    old = group.attrs.get("identity", {})
    return [f"{k}: {old.get(k)!r} != {v!r}" for k, v in identity.items() if old.get(k) != v]


def read(group: zarr.Group, name: str, selection=slice(None)) -> np.ndarray:
    """group[name][selection] as numpy; a chunk that fails to decode is a StoreError naming it."""
    try:
        return np.asarray(group[name][selection])
    except ValueError as e:  # the codecs' own errors: checksum, zstd, truncated
        raise _damaged(f"{group.store_path}/{name}", e) from None


def done_shards(group: zarr.Group) -> np.ndarray:
    """[S] bool: which shards have all their rows written."""
    return read(group, "shards_done")


def unfit(rows: np.ndarray) -> np.ndarray:
    """Row positions [m] with a NaN, an Inf, or a value of magnitude MAX_ABS or more (rows [n, ...])."""
    flat = rows.reshape(len(rows), -1)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(~(np.abs(flat) < MAX_ABS).all(1))


def digest(name: str, shard: int, start: int, data) -> int:
    """crc32 of one shard's `name` data (an array as stored, or the paths) with its place."""
    crc = zlib.crc32(struct.pack("<qq", shard, start) + name.encode())
    if name == "paths":
        return zlib.crc32("\0".join(data).encode("utf-8"), crc)
    return zlib.crc32(np.ascontiguousarray(data), crc)  # the buffer itself: no copy


def write_shard(group: zarr.Group, shard: int, start: int, *, rows: np.ndarray, labels: np.ndarray,
                paths: list[str] | None, views: np.ndarray | None = None) -> None:
    """Write a whole shard's rows [n, D], labels, paths (and views [n, K, D]) and their digest, then
    mark it done. Rows are cast to the stored dtype first; rows that are then not finite, or too
    large, are refused naming their samples, and nothing of the shard is written."""
    rows = rows.astype(group["embeddings"].dtype)
    views = views.astype(group["views"].dtype) if views is not None else None
    bad = unfit(rows) if views is None else np.union1d(unfit(rows), unfit(views))
    if len(bad):
        named = ", ".join(f"sample {start + int(j)}" + (f" ({paths[int(j)]})" if paths else "")
                          for j in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise StoreError(f"{group.path}: shard {shard}: {len(bad)} of {len(rows)} rows are not finite (NaN, "
                         f"Inf) or too large (|x| >= {MAX_ABS:g}, whose square overflows float32) as "
                         f"{rows.dtype}: {named}{more}; the shard is not marked done")
    labels = np.asarray(labels).astype(group["labels"].dtype)
    data = {"embeddings": rows, "views": views, "labels": labels,
            "paths": list(paths) if paths is not None and "paths" in group else None}
    end = start + len(rows)
    with naming(group.store_path):
        for name, value in data.items():
            if value is not None:
                group[name][start:end] = np.asarray(value, dtype=str) if name == "paths" else value
        group["digests"][shard] = [digest(n, shard, start, v) if v is not None else -1
                                   for n, v in data.items()]
        group["shards_done"][shard] = True


def mark_complete_if_done(group: zarr.Group) -> bool:
    """Set `complete: true` when every shard is done; return whether it is."""
    done = done_shards(group)
    complete = bool(done.all())
    group.attrs.update({"complete": complete, "completed_shards": int(done.sum())})
    return complete


def shape_problem(group: zarr.Group) -> str | None:
    """How the arrays' shapes disagree with the layout the group was created with, or None."""
    layout = group.attrs.get("layout")
    if layout is None:  # made by an older version
        return None
    n, s = layout["num_samples"], layout["num_shards"]
    c = layout["label_columns"]
    want = {"embeddings": (n, layout["dim"]), "labels": (n, c) if c else (n,), "shards_done": (s,),
            "digests": (s, len(DIGESTED))}
    if layout.get("paths", True):
        want["paths"] = (n,)
    if layout["views"]:
        want["views"] = (n, layout["views"], layout["dim"])
    for name, shape in want.items():
        got = tuple(group[name].shape) if name in group else None
        if got != shape:
            return f"{name} has shape {got}, its layout says {shape}"
    return None


@dataclass
class EmbeddingSet:
    """A complete (encoder, split) group opened for reading. Whole reads are checked: a row that is
    not finite (or too large), or a shard whose data is not what was written there, is a
    StoreError naming the group."""

    group: zarr.Group
    encoder: str
    split: str
    _digests: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (problem := shape_problem(self.group)) is not None:
            raise StoreError(f"{self.encoder}/{self.split}: {problem}; the group's metadata was edited or "
                             "damaged: rebuild the group")
        self._digests = read(self.group, "digests") if "digests" in self.group else None

    @property
    def embeddings(self) -> zarr.Array:
        """[N, D] rows, read lazily: slice it (`e.embeddings[a:b]`); unchecked."""
        return self.group["embeddings"]

    @property
    def views(self) -> zarr.Array | None:
        """[N, K, D] embeddings of K augmented views (stores made with --views K), else None."""
        return self.group["views"] if "views" in self.group else None

    @cached_property
    def labels(self) -> np.ndarray:
        """[N] int32 class indices, or [N, C] int8 multi-hot for a multi-label split (read once, checked)."""
        labels = read(self.group, "labels")
        self.check("labels", 0, labels)
        return labels

    @cached_property
    def paths(self) -> list[str] | None:
        """[N] source paths relative to the split folder (read once, checked); None for a group
        imported without them."""
        if "paths" not in self.group:
            return None
        paths = [str(p) for p in read(self.group, "paths")]
        self.check("paths", 0, paths)
        return paths

    @property
    def attrs(self) -> dict:
        return self.group.attrs.asdict()

    @property
    def classes(self) -> list[str] | None:
        """Class names in label order, as the shards listed them (None for imported groups)."""
        return self.group.attrs.get("classes")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.embeddings.shape)

    def check(self, name: str, start: int, data) -> None:
        """The shards wholly inside data (array `name` from row `start`) hold what was written there."""
        if self._digests is None:  # a group of an older version: no digests to check
            return
        k, n, column = self.embeddings.chunks[0], self.shape[0], DIGESTED.index(name)
        for s in range(-(-start // k), -(-min(n, start + len(data)) // k)):
            span = shard_span(s, k, n)
            lo, hi = span.start, span.stop
            if hi > start + len(data):
                break
            if digest(name, s, lo, data[lo - start : hi - start]) != self._digests[s, column]:
                raise StoreError(f"{self.encoder}/{self.split}: shard {s}'s {name} are not what was written "
                                 "there (a chunk moved, replaced or edited); check the store with python -m "
                                 "embed.verify STORE, and --repair it or rebuild the group")

    def _blocks(self, rows: int):
        array = self.embeddings
        n, chunk = array.shape[0], array.chunks[0]
        step = max(1, rows // chunk) * chunk
        for start in range(0, n, step):
            block = read(self.group, "embeddings", slice(start, start + step))
            self.check("embeddings", start, block)
            yield start, block.astype(np.float32, copy=False)

    def row_blocks(self, rows: int = 65536):
        """(start, block [b, D] float32) over the whole array, in chunk-aligned blocks, checked."""
        for start, block in self._blocks(rows):
            if len(unfit(block)):
                self.refuse_unfit()
            yield start, block

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows [len(indices), D] float32 in the order given, read as one sorted selection (their
        finiteness checked; their digests are checked by a whole read, as every probe makes one)."""
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            x = np.asarray(self.embeddings.get_orthogonal_selection((unique, slice(None))), dtype=np.float32)
        except ValueError as e:
            raise _damaged(f"{self.group.store_path}/embeddings", e) from None
        if len(unfit(x)):
            self.refuse_unfit()
        return x[inverse]

    def count_unfit(self) -> int:
        """How many rows hold a NaN, an Inf or a value of MAX_ABS or more (one pass over the array)."""
        return sum(len(unfit(b)) for _, b in self._blocks(65536))

    def require_finite(self) -> None:
        """One pass over every row; a StoreError if any is not finite, or a shard not as written."""
        for _ in self.row_blocks():
            pass

    def refuse_unfit(self) -> None:
        """Raise the StoreError for a group holding non-finite or too large rows, with their count."""
        bad = self.count_unfit()
        raise StoreError(f"{self.encoder}/{self.split}: {bad} of {self.shape[0]} rows are not finite (NaN or "
                         f"Inf) or too large (|x| >= {MAX_ABS:g}); nothing was computed. Check the store "
                         "with python -m embed.verify, or rebuild it from finite input")


def list_groups(store: Path | str) -> list[tuple[str, str]]:
    """(encoder, split) of every whole group in the store (temporary and lock folders aside)."""
    return [(e, s) for e, s, whole in group_folders(store) if whole]


def group_folders(store: Path | str) -> list[tuple[str, str, bool]]:
    """(encoder, split, whether its zarr.json is there) of every group folder in the store: a
    folder holding arrays counts, with or without its metadata."""
    if remote.is_url(store):
        return _remote_group_folders(str(store))
    root = remote.local(store)
    out = []
    for e in sorted(root.iterdir()) if root.is_dir() else []:
        if e.is_dir() and not e.name.startswith("."):
            for s in sorted(e.iterdir()):
                meta = (s / "zarr.json").is_file()
                if s.is_dir() and not s.name.startswith(".") and (meta or (s / "embeddings").is_dir()):
                    out.append((e.name, s.name, meta))
    return out


def _remote_group_folders(store: str) -> list[tuple[str, str, bool]]:
    fs, path = remote.filesystem(store)
    found = remote.retried(store, lambda: fs.glob(f"{path.rstrip('/')}/*/*/*/zarr.json"))
    groups: dict[tuple[str, str], bool] = {}
    for name in found:  # <encoder>/<split>/<array>/zarr.json: a group folder holding arrays
        encoder, split = name[len(path.rstrip("/")) + 1:].split("/")[:2]
        if not encoder.startswith(".") and not split.startswith("."):
            groups[(encoder, split)] = False
    for key in groups:
        groups[key] = remote.exists(remote.join(store, *key, "zarr.json"))
    return [(e, s, meta) for (e, s), meta in sorted(groups.items())]


def rerun_hint(group: zarr.Group) -> str:
    """How to finish or rebuild a group: embed again, or import again for an imported one."""
    if source := group.attrs.get("imported_from"):
        return f"import it again: python -m embed.from_npy {source} --encoder E --out STORE --overwrite"
    return "rerun python -m embed to finish it"


def open_embeddings(store: Path | str, encoder: str, split: str, *,
                    require_complete: bool = True) -> EmbeddingSet:
    """The group for (encoder, split); a clear error if it is absent, unfinished or empty."""
    g = open_group(store, encoder, split)
    if g is None:
        have = list_groups(store) if remote.is_url(store) or Path(store).is_dir() else []
        listed = ", ".join(f"{e}/{s}" for e, s in have) or "nothing"
        raise StoreError(f"{store}: no {encoder}/{split} (the store holds: {listed})")
    if require_complete and not g.attrs.get("complete", False):
        done = done_shards(g) if "shards_done" in g else np.zeros(0, bool)
        raise StoreError(f"{store}: {encoder}/{split} is incomplete ({int(done.sum())} of "
                         f"{len(done)} shards written); {rerun_hint(g)}")
    e = EmbeddingSet(g, encoder, split)
    if require_complete and e.shape[0] == 0:
        raise StoreError(f"{store}: {encoder}/{split} has no rows: there is nothing to probe")
    return e


ORDERS = ("index", "seed")  # rows by sample index (ImageFolder order), or as the reference's .npy files


def seed_order(n: int) -> np.ndarray:
    """[n] the reference's row order: its compute_embeddings.py reads a split through MSN's
    init_data, a DistributedSampler (one replica, shuffle on, seed 0, epoch 0), so its row j is
    sample torch.randperm(n, generator seeded 0)[j]."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()


def row_order(e: EmbeddingSet, order: str) -> np.ndarray | None:
    """The sample index of each row for `order`: None for "index" (the store's own order), the
    reference's permutation for "seed"; a StoreError where the reference could not have made it."""
    if order == "index":
        return None
    if order not in ORDERS:
        raise StoreError(f"--order {order!r}: one of {', '.join(ORDERS)}")
    if e.attrs.get("imported_from"):
        raise StoreError(f"--order seed: {e.encoder}/{e.split} was imported, in whatever order its files "
                         "held (reference files are in the seed's order already): use --order index")
    if skipped := e.attrs.get("skipped_files"):
        raise StoreError(f"--order seed: the shard stage skipped {skipped} files of {e.split} that the "
                         "reference's ImageFolder lists (and would have stopped on), so its order is another")
    return seed_order(e.shape[0])


def num_shards(num_samples: int, samples_per_shard: int) -> int:
    """How many shards of K rows hold N samples."""
    return math.ceil(num_samples / samples_per_shard) if num_samples else 0
