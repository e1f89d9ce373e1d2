"""python -m embed.from_npy DIR --encoder E --out STORE.zarr: reference files into a store.

    python -m embed.from_npy data/imagenet --encoder vits16_800ep --out out/embeddings.zarr
    python -m embed.from_npy data/imagenet --encoder vits16_800ep --out out/embeddings.zarr --overwrite

Reads, for every split S found in DIR, `embeddings_<E>_<S>.npy` with `labels_<S>.npy` and the
optional `filepaths_<S>.txt` (the layout of the reference scripts, and of `python -m
embed.export`; published embeddings often come as bare .npy: a group without paths is valid),
and writes a complete store group per split, so embeddings computed elsewhere can be probed
with msnpipe. Every split is checked before any is written: rows real floating point, finite
and below 1e18 (float64 rows that float32 cannot hold are refused), labels whole numbers in
[0, 2^31) (multi-hot: 0 and 1), as many of each as rows. Each group is built whole, rows
included, under STORE/.tmp and swapped into place, so a kill leaves the old group or none; its
identity holds the sha256 of the files it was read from: a rerun skips a split already imported
from the same files and refuses one imported from others unless --overwrite, which replaces it
whole.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed import store
from msnpipe.files import plain_name
from msnpipe.remote import location
from msnpipe.runtime import command
from shard.reader import shard_span

log = logging.getLogger("embed.from_npy")
ROWS_PER_CHUNK = 1000
MAX_LABEL = 2**31  # labels are stored as int32


@dataclass
class Source:
    """One split's files, checked: rows [N, D] (memory-mapped), labels [N] or [N, C], paths or None,
    and the sha256 of each file."""

    split: str
    rows: np.ndarray
    labels: np.ndarray
    paths: list[str] | None
    files: dict[str, str]


def find_splits(folder: Path, encoder: str) -> list[str]:
    """Splits S with an embeddings_<encoder>_S.npy in `folder`."""
    pattern = re.compile(rf"embeddings_{re.escape(encoder)}_(.+)\.npy")
    return sorted(m.group(1) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _load(path: Path, **kw) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, **kw)
    except (ValueError, OSError, EOFError) as e:
        raise store.StoreError(f"{path}: not a .npy array ({str(e).splitlines()[0][:160]})") from None


def _check_rows(path: Path, rows: np.ndarray) -> None:
    """Rows: [N, D] of a real floating dtype, every value finite and below MAX_ABS once as float32
    (read block by block)."""
    if rows.ndim != 2 or rows.dtype.kind != "f":
        raise store.StoreError(f"{path}: {rows.dtype} {list(rows.shape)}; embeddings must be a real "
                               "floating-point array [N, D] (complex, integer and object arrays are not "
                               "embeddings)")
    bad = []
    for lo in range(0, len(rows), 65536):
        with np.errstate(over="ignore"):
            block = np.asarray(rows[lo : lo + 65536]).astype(np.float32)  # float64 beyond float32: inf
        bad += (lo + store.unfit(block)).tolist()
    if bad:
        raise store.StoreError(f"{path}: {len(bad)} of {len(rows)} rows are not finite (NaN, Inf) or too "
                               f"large for float32 arithmetic (|x| >= {store.MAX_ABS:g}), first at row "
                               f"{bad[0]}; nothing was imported")


def _check_labels(path: Path, labels: np.ndarray, n: int) -> np.ndarray:
    """Labels as stored: int32 class indices [N] in [0, 2^31), or int8 multi-hot [N, C] of 0 and 1."""
    if labels.dtype.kind not in "iub" or labels.ndim not in (1, 2):
        raise store.StoreError(f"{path}: {labels.dtype} {list(labels.shape)}; labels must be whole numbers, "
                               "[N] class indices or [N, C] multi-hot (floats would be truncated)")
    if len(labels) != n:
        raise store.StoreError(f"{path}: {len(labels)} labels for {n} embeddings; they do not match")
    low, high = (int(labels.min()), int(labels.max())) if len(labels) else (0, 0)
    if labels.ndim == 2 and (low < 0 or high > 1):
        raise store.StoreError(f"{path}: multi-hot labels hold values from {low} to {high}; only 0 and 1")
    if low < 0 or high >= MAX_LABEL:
        raise store.StoreError(f"{path}: labels from {low} to {high}; class indices are 0 to {MAX_LABEL - 1}")
    return labels.astype(np.int32 if labels.ndim == 1 else np.int8)


def read_split(folder: Path, encoder: str, split: str) -> Source:
    """One split's files, every value checked (see the module docstring)."""
    plain_name(split, "split")
    path, labels_path = folder / f"embeddings_{encoder}_{split}.npy", folder / f"labels_{split}.npy"
    rows = _load(path, mmap_mode="r")
    _check_rows(path, rows)
    if not labels_path.exists():
        raise store.StoreError(f"{labels_path}: missing (needed beside the embeddings)")
    labels = _check_labels(labels_path, _load(labels_path), len(rows))
    paths_file, paths = folder / f"filepaths_{split}.txt", None
    files = {path.name: path, labels_path.name: labels_path}
    if paths_file.exists():
        paths = paths_file.read_text(encoding="utf-8").splitlines()
        if len(paths) != len(rows):
            raise store.StoreError(f"{paths_file}: {len(paths)} lines for {len(rows)} embeddings")
        files[paths_file.name] = paths_file
    return Source(split, rows, labels, paths, {name: _sha256(p) for name, p in files.items()})


def _identity(folder: Path, encoder: str, source: Source) -> dict:
    return {"encoder": encoder, "imported_from": str(folder.resolve()), "files": source.files}


def _fill(source: Source):
    """Write every row of `source` into the group being built, and mark it complete."""
    def fill(g) -> None:
        n = len(source.rows)
        for s in range(store.num_shards(n, ROWS_PER_CHUNK)):
            span = shard_span(s, ROWS_PER_CHUNK, n)
            lo, hi = span.start, span.stop
            paths = source.paths[lo:hi] if source.paths is not None else None
            store.write_shard(g, s, lo, rows=np.asarray(source.rows[lo:hi], dtype=np.float32),
                              labels=source.labels[lo:hi], paths=paths)
        store.mark_complete_if_done(g)
    return fill


def import_split(folder: Path, encoder: str, source: Source, *, out: Path, overwrite: bool = False) -> str:
    """One checked split into a complete group, built whole and swapped in; "imported" or
    "unchanged" (already imported from the same files)."""
    n, d = source.rows.shape
    layout = store.Layout(n, d, ROWS_PER_CHUNK, store.num_shards(n, ROWS_PER_CHUNK),
                          label_columns=source.labels.shape[1] if source.labels.ndim == 2 else 0,
                          paths=source.paths is not None)
    identity = _identity(folder, encoder, source)
    attrs = {"encoder": encoder, "kind": "cls_prenorm", "imported_from": identity["imported_from"],
             "identity": identity}
    with store.writer_lock(out, encoder, source.split):
        old = store.open_group(out, encoder, source.split)
        if old is not None and old.attrs.get("complete") and not store.identity_mismatch(old, identity):
            return "unchanged"
        store.create_group(out, encoder, source.split, layout=layout, attrs=attrs, overwrite=overwrite,
                           fill=_fill(source))
    return "imported"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embed.from_npy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", type=location, required=True, help="a Zarr store: a folder or a URL")
    p.add_argument("--overwrite", action="store_true", help="replace groups made from other files, whole")
    return p.parse_args(argv)


def _refuse_other_imports(a: argparse.Namespace, sources: list[Source]) -> None:
    """Before anything is written: a group of the same name made from other files, without --overwrite."""
    for src in sources:
        old = store.open_group(a.out, a.encoder, src.split)
        if old is None or a.overwrite:
            continue
        if diff := store.identity_mismatch(old, _identity(a.folder, a.encoder, src)):
            raise store.StoreError(f"{a.out}: {a.encoder}/{src.split} already exists, made from other files "
                                   f"({'; '.join(diff)[:300]}); pass --overwrite to replace it")


def run(a: argparse.Namespace) -> None:
    """Import every split found in the folder, checking all of them first."""
    plain_name(a.encoder, "--encoder")
    splits = find_splits(a.folder, a.encoder) if a.folder.is_dir() else []
    if not splits:
        raise store.StoreError(f"{a.folder}: no embeddings_{a.encoder}_<split>.npy found")
    sources = [read_split(a.folder, a.encoder, split) for split in splits]
    _refuse_other_imports(a, sources)
    for src in sources:
        what = import_split(a.folder, a.encoder, src, out=a.out, overwrite=a.overwrite)
        n, d = src.rows.shape
        paths = "" if src.paths is not None else ", no paths"
        log.info("%s/%s: %d x %d rows%s -> %s (%s)", a.encoder, src.split, n, d, paths, a.out,
                 "already imported from these files" if what == "unchanged" else "imported")


def main(argv: list[str] | None = None) -> int:
    """Import every split found; exit status 1 when none is found or one is malformed."""
    return command(_parse, run, argv, logger="embed")


if __name__ == "__main__":
    sys.exit(main())
