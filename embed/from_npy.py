"""python -m embed.from_npy DIR --encoder E --out STORE.zarr: reference files into a store.

    python -m embed.from_npy data/imagenet --encoder vits16_800ep --out out/embeddings.zarr
    python -m embed.from_npy data/imagenet --encoder vits16_800ep --out out/embeddings.zarr --overwrite

Reads, for every split found in DIR, `embeddings_<E>_<split>.npy` with `labels_<split>.npy`
and the optional `filepaths_<split>.txt` (the layout of the reference scripts, and of
`python -m embed.export`), and writes a complete store group per split, so embeddings
computed elsewhere can be probed with msnpipe. Rows that are not finite are refused; a
group that already exists is refused unless --overwrite, which replaces it whole.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import numpy as np

from embed import store
from msnpipe.files import plain_name
from msnpipe.runtime import command

log = logging.getLogger("embed.from_npy")
ROWS_PER_CHUNK = 1000


def find_splits(folder: Path, encoder: str) -> list[str]:
    """Splits S with an embeddings_<encoder>_S.npy in `folder`."""
    pattern = re.compile(rf"embeddings_{re.escape(encoder)}_(.+)\.npy")
    return sorted(m.group(1) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))


def _non_finite_rows(path: Path, rows: np.ndarray) -> None:
    """Refuse a file holding NaN or Inf rows, naming it and how many (read block by block)."""
    bad = []
    for lo in range(0, len(rows), 65536):
        block = np.asarray(rows[lo : lo + 65536])
        bad += (lo + np.flatnonzero(~np.isfinite(block).all(1))).tolist()
    if bad:
        raise store.StoreError(f"{path}: {len(bad)} of {len(rows)} rows are not finite (NaN or Inf), "
                               f"first at row {bad[0]}; nothing was imported")


def _read_split(folder: Path, encoder: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rows [N, D] memory-mapped, labels [N] or [N, C], paths [N]) of one split, checked."""
    path = folder / f"embeddings_{encoder}_{split}.npy"
    try:
        rows = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise store.StoreError(f"{path}: not a .npy array ({e})") from None
    labels_path = folder / f"labels_{split}.npy"
    if not labels_path.exists():
        raise store.StoreError(f"{labels_path}: missing (needed beside the embeddings)")
    labels = np.load(labels_path)
    if rows.ndim != 2 or labels.ndim not in (1, 2) or len(labels) != len(rows):
        raise store.StoreError(f"{folder}: embeddings {rows.shape} and labels {labels.shape} "
                               f"of split {split} do not match (expected [N, D] and [N] or [N, C])")
    _non_finite_rows(path, rows)
    paths_file = folder / f"filepaths_{split}.txt"
    paths = paths_file.read_text(encoding="utf-8").splitlines() if paths_file.exists() else [""] * len(rows)
    if len(paths) != len(rows):
        raise store.StoreError(f"{paths_file}: {len(paths)} lines for {len(rows)} embeddings")
    return rows, labels.astype(np.int32 if labels.ndim == 1 else np.int8), paths


def import_split(folder: Path, encoder: str, split: str, *, out: Path, overwrite: bool = False
                 ) -> tuple[int, int]:
    """One split from .npy files to a complete group; return (N, D)."""
    rows, labels, paths = _read_split(folder, encoder, split)
    n, d = rows.shape
    layout = store.Layout(n, d, ROWS_PER_CHUNK, store.num_shards(n, ROWS_PER_CHUNK),
                          label_columns=labels.shape[1] if labels.ndim == 2 else 0)
    attrs = {"encoder": encoder, "kind": "cls_prenorm", "imported_from": str(folder.resolve()),
             "identity": {"encoder": encoder, "imported_from": str(folder.resolve())}}
    with store.writer_lock(out, encoder, split):
        g = store.create_group(out, encoder, split, layout=layout, attrs=attrs, overwrite=overwrite)
        for s in range(layout.num_shards):
            lo, hi = s * ROWS_PER_CHUNK, min(n, (s + 1) * ROWS_PER_CHUNK)
            block = np.asarray(rows[lo:hi], dtype=np.float32)
            store.write_shard(g, s, lo, rows=block, labels=labels[lo:hi], paths=paths[lo:hi])
        store.mark_complete_if_done(g)
    return n, d


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embed.from_npy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace groups that already exist, whole")
    return p.parse_args(argv)


def run(a: argparse.Namespace) -> None:
    """Import every split found in the folder, checking all of them first."""
    plain_name(a.encoder, "--encoder")
    splits = find_splits(a.folder, a.encoder) if a.folder.is_dir() else []
    if not splits:
        raise store.StoreError(f"{a.folder}: no embeddings_{a.encoder}_<split>.npy found")
    for split in splits:
        if not a.overwrite and store.open_group(a.out, a.encoder, split) is not None:
            raise store.StoreError(f"{a.out}: {a.encoder}/{split} already exists; pass --overwrite "
                                   "to replace it")
    for split in splits:
        n, d = import_split(a.folder, a.encoder, split, out=a.out, overwrite=a.overwrite)
        log.info("%s/%s: %d x %d rows -> %s", a.encoder, split, n, d, a.out)


def main(argv: list[str] | None = None) -> int:
    """Import every split found; exit status 1 when none is found or one is malformed."""
    return command(_parse, run, argv, logger="embed")


if __name__ == "__main__":
    sys.exit(main())
