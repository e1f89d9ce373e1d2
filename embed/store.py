"""The embedding store: one Zarr (format 3) group per encoder and split.

    STORE/<encoder>/<split>/embeddings   float32 [N, D] (float16 on request); row i = sample i
    STORE/<encoder>/<split>/views        float32 [N, K, D], K augmented views (with --views K)
    STORE/<encoder>/<split>/labels       int32 [N] (multi-label splits: int8 multi-hot [N, C])
    STORE/<encoder>/<split>/paths        str [N], source path relative to the split folder
    STORE/<encoder>/<split>/shards_done  bool [S], one chunk per shard: set once its rows are written
    attributes: encoder, architecture, kind, weights and sha256, preprocessing, precision,
                device, batch size, versions, shards manifest sha256, identity, complete

Row chunks are aligned with shards, so processes that own different shards never share a
chunk, and `shards_done` has one chunk per shard for the same reason. The next stage reads
a store only through `open_embeddings`:

    from embed.store import open_embeddings
    e = open_embeddings("out/embeddings.zarr", "vits16_800ep", "val")
    e.embeddings[:1000]   # zarr array, read in slices;  e.labels  [N] int32
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

DTYPES = ("float32", "float16")


class StoreError(ValueError):
    """A store that is missing, incomplete, or was built from other inputs or settings."""


@dataclass(frozen=True)
class Layout:
    """The shape of one group: N rows of width D, cut into shards of K rows."""

    num_samples: int
    dim: int
    samples_per_shard: int
    num_shards: int
    dtype: str = "float32"
    views: int = 0  # K augmented views per sample (0: no views array)


def _open_root(store: Path | str, mode: str) -> zarr.Group:
    return zarr.open_group(str(store), mode=mode, zarr_format=3)


def create_group(store: Path | str, encoder: str, split: str, layout: Layout,
                 labels: np.ndarray, paths: list[str], attrs: dict) -> zarr.Group:
    """Create the arrays of a new group, labels and paths filled in, nothing done yet."""
    root = _open_root(store, "a")
    g = root.require_group(encoder).require_group(split)
    n, k = layout.num_samples, max(1, layout.samples_per_shard)
    g.create_array("embeddings", shape=(n, layout.dim), chunks=(k, layout.dim),
                   dtype=layout.dtype, fill_value=np.nan, overwrite=True)
    if layout.views:
        g.create_array("views", shape=(n, layout.views, layout.dim), chunks=(k, layout.views, layout.dim),
                       dtype=layout.dtype, fill_value=np.nan, overwrite=True)
    dtype = "int32" if labels.ndim == 1 else "int8"  # multi-label: multi-hot [N, C]
    g.create_array("labels", shape=labels.shape, chunks=(k, *labels.shape[1:]), dtype=dtype,
                   overwrite=True)[:] = labels
    g.create_array("paths", shape=(n,), chunks=(k,), dtype=str, overwrite=True)[:] = np.array(
        paths, dtype=str)
    g.create_array("shards_done", shape=(layout.num_shards,), chunks=(1,), dtype=bool,
                   fill_value=False, overwrite=True)
    g.attrs.update(attrs | {"complete": False})
    return g


def open_group(store: Path | str, encoder: str, split: str, mode: str = "r") -> zarr.Group | None:
    """The group of (encoder, split), or None when the store or the group does not exist."""
    if not Path(store).exists():
        return None
    root = _open_root(store, mode)
    key = f"{encoder}/{split}"
    return root[key] if key in root else None


def identity_mismatch(group: zarr.Group, identity: dict) -> list[str]:
    """The settings in which `group` differs from `identity`, as 'key: old != new'."""
    old = group.attrs.get("identity", {})
    return [f"{k}: {old.get(k)!r} != {v!r}" for k, v in identity.items() if old.get(k) != v]


def done_shards(group: zarr.Group) -> np.ndarray:
    """[S] bool: which shards have all their rows written."""
    return np.asarray(group["shards_done"][:])


def write_rows(group: zarr.Group, shard: int, start: int, rows: np.ndarray,
               views: np.ndarray | None = None) -> None:
    """Write a whole shard's rows [n, D] (and views [n, K, D]), then mark the shard done."""
    group["embeddings"][start : start + len(rows)] = rows.astype(group["embeddings"].dtype)
    if views is not None:
        group["views"][start : start + len(views)] = views.astype(group["views"].dtype)
    group["shards_done"][shard] = True


def mark_complete_if_done(group: zarr.Group) -> bool:
    """Set `complete: true` when every shard is done; return whether it is."""
    done = done_shards(group)
    complete = bool(done.all())
    group.attrs.update({"complete": complete, "completed_shards": int(done.sum())})
    return complete


@dataclass
class EmbeddingSet:
    """A complete (encoder, split) group opened for reading."""

    group: zarr.Group
    encoder: str
    split: str

    @property
    def embeddings(self) -> zarr.Array:
        """[N, D] rows, read lazily: slice it (`e.embeddings[a:b]`)."""
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
    def shape(self) -> tuple[int, int]:
        return tuple(self.embeddings.shape)

    def row_blocks(self, rows: int = 65536):
        """(start, block [b, D] float32) over the whole array, in chunk-aligned blocks."""
        n = self.shape[0]
        step = max(1, rows // self.embeddings.chunks[0]) * self.embeddings.chunks[0]
        for start in range(0, n, step):
            yield start, np.asarray(self.embeddings[start : start + step], dtype=np.float32)


def list_groups(store: Path | str) -> list[tuple[str, str]]:
    """(encoder, split) of every group in the store."""
    root = _open_root(store, "r")
    return sorted((e, s) for e, eg in root.groups() for s, _ in eg.groups())


def open_embeddings(store: Path | str, encoder: str, split: str,
                    require_complete: bool = True) -> EmbeddingSet:
    """The group for (encoder, split); a clear error if it is absent or unfinished."""
    g = open_group(store, encoder, split)
    if g is None:
        have = list_groups(store) if Path(store).exists() else []
        listed = ", ".join(f"{e}/{s}" for e, s in have) or "nothing"
        raise StoreError(f"{store}: no {encoder}/{split} (the store holds: {listed})")
    if require_complete and not g.attrs.get("complete", False):
        done = done_shards(g)
        raise StoreError(f"{store}: {encoder}/{split} is incomplete ({int(done.sum())} of "
                         f"{len(done)} shards written); rerun python -m embed to finish it")
    return EmbeddingSet(g, encoder, split)


def num_shards(num_samples: int, samples_per_shard: int) -> int:
    """How many shards of K rows hold N samples."""
    return math.ceil(num_samples / samples_per_shard) if num_samples else 0
