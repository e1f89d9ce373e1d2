"""The embedding store: one Zarr (format 3) group per encoder and split.

    STORE/<encoder>/<split>/embeddings   float32 [N, D] (float16 on request); row i = sample i
    STORE/<encoder>/<split>/views        float32 [N, K, D], K augmented views (with --views K)
    STORE/<encoder>/<split>/labels       int32 [N] (multi-label splits: int8 multi-hot [N, C])
    STORE/<encoder>/<split>/paths        str [N], source path relative to the split folder
    STORE/<encoder>/<split>/shards_done  bool [S], one chunk per shard: set once its rows are written
    attributes: encoder, architecture, kind, weights and sha256, preprocessing, precision,
                device, batch size, versions, shards manifest sha256, identity, complete

Row chunks are aligned with shards, so processes that own different shards never share a
chunk, and `shards_done` has one chunk per shard for the same reason. Every chunk ends in a
crc32c checksum, so a flipped byte fails on read instead of shifting a value. A shard's rows,
labels and paths are written (after a check that every row is finite) before it is marked
done; rows of a shard not marked done are never read. A group is created under a temporary
name and renamed into place, so it exists whole or not at all; one process writes it at a
time (`writer_lock`).

The next stage reads a store only through `open_embeddings`:

    from embed.store import open_embeddings
    e = open_embeddings("out/embeddings.zarr", "vits16_800ep", "val")
    e.embeddings[:1000]   # zarr array, read in slices;  e.labels  [N] int32
    for start, block in e.row_blocks(): ...   # [b, D] float32, checked finite
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from msnpipe.files import exclusive, naming, plain_name
from msnpipe.runtime import UserError

if TYPE_CHECKING:  # zarr is imported where a store is opened, so command lines start fast
    import zarr

DTYPES = ("float32", "float16")
LOCKS, TMP = ".locks", ".tmp"  # beside the groups, never inside one


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


def _codecs() -> dict:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {"compressors": (ZstdCodec(), Crc32cCodec())}  # crc32c of the compressed bytes


def _open_root(store: Path | str, mode: str) -> zarr.Group:
    import zarr

    return zarr.open_group(str(store), mode=mode, zarr_format=3)


def _named(encoder: str, split: str) -> tuple[str, str]:
    """A group is STORE/<encoder>/<split>: both must be plain names."""
    return plain_name(encoder, "--encoder"), plain_name(split, "--split")


def writer_lock(store: Path | str, encoder: str, split: str) -> AbstractContextManager:
    """Hold the one-writer lock of group (encoder, split); a second writer gets Busy naming us."""
    _named(encoder, split)
    folder = Path(store) / LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    return exclusive(folder / f"{encoder}--{split}.lock", f"{store}: {encoder}/{split}")


def _build(path: Path, layout: Layout, attrs: dict) -> None:
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
    g.create_array("paths", shape=(n,), chunks=(k,), dtype=str, **_codecs())
    g.create_array("shards_done", shape=(layout.num_shards,), chunks=(1,), dtype=bool,
                   fill_value=False, **_codecs())
    g.attrs.update(attrs | {"complete": False})


def create_group(store: Path | str, encoder: str, split: str, *, layout: Layout, attrs: dict,
                 overwrite: bool = False) -> zarr.Group:
    """Create group (encoder, split) atomically: built under STORE/.tmp, then renamed into place.
    An existing group is an error unless `overwrite`, which replaces it whole. Call it holding
    `writer_lock`."""
    _named(encoder, split)
    root = _open_root(store, "a")
    root.require_group(encoder)
    final = Path(store) / encoder / split
    if final.exists() and not overwrite:
        raise StoreError(f"{store}: {encoder}/{split} already exists; pass --overwrite to replace it")
    tmp = Path(store) / TMP / f"{encoder}--{split}--{os.getpid()}"
    for stale in tmp.parent.glob(f"{encoder}--{split}--*"):  # left by a killed creator
        shutil.rmtree(stale)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _build(tmp, layout, attrs)
    if final.exists():
        old = tmp.with_name(tmp.name + "--replaced")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    return open_group(store, encoder, split, mode="a")


def open_group(store: Path | str, encoder: str, split: str, *, mode: str = "r") -> zarr.Group | None:
    """The group of (encoder, split), or None when the store or the group does not exist."""
    _named(encoder, split)
    if not (Path(store) / encoder / split / "zarr.json").is_file():
        return None
    return _open_root(store, mode)[f"{encoder}/{split}"]


def is_whole(group: zarr.Group) -> bool:
    """Whether a group was finished being created (groups of older versions could be half-made)."""
    return "identity" in group.attrs and "shards_done" in group


def identity_mismatch(group: zarr.Group, identity: dict) -> list[str]:
    """The settings in which `group` differs from `identity`, as 'key: old != new'."""
    old = group.attrs.get("identity", {})
    return [f"{k}: {old.get(k)!r} != {v!r}" for k, v in identity.items() if old.get(k) != v]


def done_shards(group: zarr.Group) -> np.ndarray:
    """[S] bool: which shards have all their rows written."""
    return np.asarray(group["shards_done"][:])


def _not_finite(rows: np.ndarray) -> np.ndarray:
    """Row positions [m] with a NaN or Inf anywhere in the row (rows [n, ...])."""
    return np.flatnonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(1))


def write_shard(group: zarr.Group, shard: int, start: int, *, rows: np.ndarray, labels: np.ndarray,
                paths: list[str], views: np.ndarray | None = None) -> None:
    """Write a whole shard's rows [n, D], labels, paths (and views [n, K, D]), then mark it done.
    Rows that are not finite are refused, naming their samples; nothing of the shard is written."""
    bad = _not_finite(rows) if views is None else np.union1d(_not_finite(rows), _not_finite(views))
    if len(bad):
        named = ", ".join(f"sample {start + int(j)} ({paths[int(j)]})" for j in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise StoreError(f"{group.path}: shard {shard}: {len(bad)} of {len(rows)} rows are not finite "
                         f"(NaN or Inf): {named}{more}; the shard is not marked done")
    end = start + len(rows)
    with naming(group.store_path):
        group["embeddings"][start:end] = rows.astype(group["embeddings"].dtype)
        if views is not None:
            group["views"][start:end] = views.astype(group["views"].dtype)
        group["labels"][start:end] = labels
        group["paths"][start:end] = np.asarray(paths, dtype=str)
        group["shards_done"][shard] = True


def mark_complete_if_done(group: zarr.Group) -> bool:
    """Set `complete: true` when every shard is done; return whether it is."""
    done = done_shards(group)
    complete = bool(done.all())
    group.attrs.update({"complete": complete, "completed_shards": int(done.sum())})
    return complete


@dataclass
class EmbeddingSet:
    """A complete (encoder, split) group opened for reading. Reads through `row_blocks` and
    `rows` are checked: a non-finite row anywhere is a StoreError naming how many there are."""

    group: zarr.Group
    encoder: str
    split: str

    @property
    def embeddings(self) -> zarr.Array:
        """[N, D] rows, read lazily: slice it (`e.embeddings[a:b]`); unchecked."""
        return self.group["embeddings"]

    @property
    def views(self) -> zarr.Array | None:
        """[N, K, D] embeddings of K augmented views (stores made with --views K), else None."""
        return self.group["views"] if "views" in self.group else None

    @property
    def labels(self) -> np.ndarray:
        """[N] int32 class indices, or [N, C] int8 multi-hot for a multi-label split."""
        return np.asarray(self.group["labels"][:])

    @property
    def paths(self) -> list[str]:
        """[N] source paths relative to the split folder."""
        return [str(p) for p in self.group["paths"][:]]

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

    def _blocks(self, array: zarr.Array, rows: int):
        n, chunk = array.shape[0], array.chunks[0]
        step = max(1, rows // chunk) * chunk
        for start in range(0, n, step):
            yield start, np.asarray(array[start : start + step], dtype=np.float32)

    def row_blocks(self, rows: int = 65536):
        """(start, block [b, D] float32) over the whole array, in chunk-aligned blocks."""
        for start, block in self._blocks(self.embeddings, rows):
            if len(_not_finite(block)):
                self.refuse_non_finite()
            yield start, block

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows [len(indices), D] float32 in the order given, read as one sorted selection."""
        unique, inverse = np.unique(indices, return_inverse=True)
        x = np.asarray(self.embeddings.get_orthogonal_selection((unique, slice(None))), dtype=np.float32)
        if len(_not_finite(x)):
            self.refuse_non_finite()
        return x[inverse]

    def count_non_finite(self) -> int:
        """How many rows hold a NaN or Inf (one pass over the array)."""
        return sum(len(_not_finite(b)) for _, b in self._blocks(self.embeddings, 65536))

    def require_finite(self) -> None:
        """One pass over every row; a StoreError if any is not finite."""
        for _ in self.row_blocks():
            pass

    def refuse_non_finite(self) -> None:
        """Raise the StoreError for a group holding non-finite rows, with their count."""
        bad = self.count_non_finite()
        raise StoreError(f"{self.encoder}/{self.split}: {bad} of {self.shape[0]} rows are not finite "
                         "(NaN or Inf); nothing was computed. Check the store with python -m "
                         "embed.verify, or rebuild it from finite input")


def list_groups(store: Path | str) -> list[tuple[str, str]]:
    """(encoder, split) of every whole group in the store (temporary and lock folders aside)."""
    root = Path(store)
    return sorted((e.name, s.name) for e in root.iterdir() if _node(e)
                  for s in e.iterdir() if _node(s))


def _node(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (path / "zarr.json").is_file()


def open_embeddings(store: Path | str, encoder: str, split: str, *,
                    require_complete: bool = True) -> EmbeddingSet:
    """The group for (encoder, split); a clear error if it is absent or unfinished."""
    g = open_group(store, encoder, split)
    if g is None:
        have = list_groups(store) if Path(store).is_dir() else []
        listed = ", ".join(f"{e}/{s}" for e, s in have) or "nothing"
        raise StoreError(f"{store}: no {encoder}/{split} (the store holds: {listed})")
    if require_complete and not g.attrs.get("complete", False):
        done = done_shards(g) if "shards_done" in g else np.zeros(0, bool)
        raise StoreError(f"{store}: {encoder}/{split} is incomplete ({int(done.sum())} of "
                         f"{len(done)} shards written); rerun python -m embed to finish it")
    return EmbeddingSet(g, encoder, split)


def num_shards(num_samples: int, samples_per_shard: int) -> int:
    """How many shards of K rows hold N samples."""
    return math.ceil(num_samples / samples_per_shard) if num_samples else 0
