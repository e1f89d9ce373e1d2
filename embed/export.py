"""python -m embed.export STORE --encoder E --split S --out DIR: the reference's file layout.

    python -m embed.export out/embeddings.zarr --encoder vits16_800ep --split val --out data/
    python -m embed.export out/embeddings.zarr --encoder vits16_800ep --split train --out data/ --order seed

writes DIR/embeddings_<E>_<S>.npy (float32 [N, D]), DIR/labels_<S>.npy (int64 [N], as the
reference's torch labels) and DIR/filepaths_<S>.txt (one `<class>/<file>` per line; none for a
group without paths), so the reference's evaluate_embeddings.py and other scripts read msnpipe
output unchanged. `--order seed` writes the rows in the order of the reference's own files (its
DistributedSampler's permutation, seed 0), so its evaluate_embeddings.py, which picks training
rows by position, draws exactly the images it drew on its own embeddings; `--order index` (the
default) is the store's, ImageFolder order. Each file is streamed to `<name>.tmp` (never the
whole array in memory), fsynced and renamed into place once whole, the embeddings last: a kill
or a full disk leaves the earlier export as it was, never a file of zeros under its name.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from embed.store import ORDERS, EmbeddingSet, open_embeddings, row_order
from msnpipe.files import fsync_rename, naming
from msnpipe.runtime import command

log = logging.getLogger("embed.export")


def _write_rows(path: Path, e: EmbeddingSet, order: np.ndarray | None) -> None:
    """The .npy of every row, streamed block by block; with `order`, row j is sample order[j]."""
    n, d = e.shape
    with naming(path), open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        header = f.tell()
        if order is None:
            for _, block in e.row_blocks():  # [b, D], in order
                f.write(block.astype("<f4").tobytes())
            return
        where = np.empty(n, np.int64)
        where[order] = np.arange(n)  # the output row of each sample
        fd, size = f.fileno(), 4 * d
        for start, block in e.row_blocks():
            block = block.astype("<f4")
            for j, row in zip(where[start : start + len(block)].tolist(), block):
                os.pwrite(fd, row.tobytes(), header + j * size)


def _write_small(path: Path, data: bytes) -> None:
    with naming(path):
        path.write_bytes(data)


def export(store: Path, encoder: str, split: str, *, out: Path, order: str = "index") -> list[Path]:
    """Write the reference files for (encoder, split), each whole or not at all; return their paths."""
    e = open_embeddings(store, encoder, split)
    perm = row_order(e, order)
    out.mkdir(parents=True, exist_ok=True)
    rows_path, labels_path = out / f"embeddings_{encoder}_{split}.npy", out / f"labels_{split}.npy"
    paths_path = out / f"filepaths_{split}.txt" if e.paths is not None else None
    final = [p for p in (labels_path, paths_path, rows_path) if p is not None]  # the order of the renames
    tmp = {p: p.with_name(p.name + ".tmp") for p in final}
    try:
        labels = e.labels.astype(np.int64)
        labels = labels if perm is None else labels[perm]
        import io

        buf = io.BytesIO()
        np.save(buf, labels)
        _write_small(tmp[labels_path], buf.getvalue())
        if paths_path is not None:
            paths = e.paths if perm is None else [e.paths[i] for i in perm]
            _write_small(tmp[paths_path], "".join(p + "\n" for p in paths).encode("utf-8"))
        _write_rows(tmp[rows_path], e, perm)
        for p in final:
            fsync_rename(tmp[p], p)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    return final


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embed.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--order", choices=ORDERS, default="index",
                   help="index (default: ImageFolder order) or seed (the reference's own row order)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export one (encoder, split); exit status 1 with a clear message on a bad store."""
    run = lambda a: export(a.store, a.encoder, a.split, out=a.out, order=a.order)  # noqa: E731
    return command(_parse, run, argv, logger="embed",
                   done=lambda _, written: log.info("wrote %s", ", ".join(map(str, written))))


if __name__ == "__main__":
    sys.exit(main())
