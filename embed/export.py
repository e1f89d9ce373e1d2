"""python -m embed.export STORE --encoder E --split S --out DIR: the rows as files other tools read.

    python -m embed.export out/embeddings.zarr --encoder vits16_800ep --split val --out data/
    python -m embed.export out/embeddings.zarr --encoder vits16_800ep --split train --out data/ --order seed
    python -m embed.export out/embeddings.zarr --encoder vits16_800ep --split train --out pq/ --format parquet
    python -m embed.export s3://bucket/e.zarr --encoder vits16_800ep --split train --out s3://bucket/faiss \
        --format faiss --faiss-index ivfpq

`--format npy` (the default) writes the reference's layout: DIR/embeddings_<E>_<S>.npy (float32
[N, D]), DIR/labels_<S>.npy (int64 [N], as the reference's torch labels) and
DIR/filepaths_<S>.txt (one `<class>/<file>` per line; none for a group without paths), so the
reference's evaluate_embeddings.py and other scripts read msnpipe output unchanged. `--order
seed` writes the rows in the order of the reference's own files (its DistributedSampler's
permutation, seed 0), so its evaluate_embeddings.py, which picks training rows by position, draws
exactly the images it drew on its own embeddings; `--order index` (the default) is the store's,
ImageFolder order.

`--format parquet` writes DIR/<E>_<S>.parquet, a row per sample: key (its WebDataset key),
index, split, label (int32, or the multi-hot int8 list), path (null without paths) and embedding
(a fixed-size list of float32), in row groups of ROW_GROUP rows streamed from the store, so
memory holds one row group whatever N (for pandas, polars, duckdb). `--format faiss` writes
DIR/<E>_<S>.faiss, a faiss index of the L2-normalised rows (inner product: cosine, as probe.knn
ranks them; `flat`, exact, or `ivfpq` for millions of rows, approximate), whose ids are the
sample indices, and DIR/<E>_<S>.ids.tsv (`id, key, label, path` per row).

Each file is streamed to `<name>.tmp` (never the whole array in memory), fsynced and renamed into
place once whole, the embeddings last: a kill or a full disk leaves the earlier export as it was,
never a file of zeros under its name. A URL for --out: the files are made so in a local stage
(under the cache, shard.reader.default_cache) and then uploaded in the same order, each one whole
object.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from embed.store import ORDERS, EmbeddingSet, open_embeddings, row_order
from msnpipe import remote
from msnpipe.files import fsync_rename, naming
from msnpipe.remote import location
from msnpipe.runtime import UserError, command

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


FORMATS = ("npy", "parquet", "faiss")
FAISS_INDEXES = ("flat", "ivfpq")
ROW_GROUP = 8192  # parquet rows a row group (32 MB of float32 rows at D=1024)


def _keys(e: EmbeddingSet) -> tuple[int, ...]:
    """The key width of the split's samples (recorded by embed; older groups: at least 8 digits)."""
    return e.attrs.get("key_digits") or max(8, len(str(max(e.shape[0] - 1, 0))))


def _publish(files: list[Path]) -> None:
    for p in files:
        fsync_rename(p.with_name(p.name + ".tmp"), p)


def _write_npy(e: EmbeddingSet, encoder: str, split: str, out: Path, perm: np.ndarray | None) -> list[Path]:
    """The reference's three files (see the module's text), rows in `perm`'s order (None: the
    store's); each whole or not at all."""
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
        _publish(final)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    return final


def _label_type(e: EmbeddingSet):
    import pyarrow as pa

    return pa.list_(pa.int8()) if e.labels.ndim == 2 else pa.int32()


def _write_parquet(e: EmbeddingSet, encoder: str, split: str, out: Path) -> list[Path]:
    """DIR/<E>_<S>.parquet, row group by row group (see the module's text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, d = e.shape
    digits, labels, paths = _keys(e), e.labels, e.paths
    schema = pa.schema([("key", pa.string()), ("index", pa.int64()), ("split", pa.string()),
                        ("label", _label_type(e)), ("path", pa.string()),
                        ("embedding", pa.list_(pa.float32(), d))])
    path = out / f"{encoder}_{split}.parquet"
    tmp = path.with_name(path.name + ".tmp")
    try:
        with naming(tmp), pq.ParquetWriter(tmp, schema) as writer:
            for start, block in e.row_blocks(ROW_GROUP):  # [b, D] float32
                stop = start + len(block)
                rows = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), d)  # float32, no copy
                label = labels[start:stop]
                writer.write_table(pa.table({
                    "key": [f"{i:0{digits}d}" for i in range(start, stop)],
                    "index": pa.array(np.arange(start, stop), pa.int64()),
                    "split": pa.array([split] * len(block), pa.string()),
                    "label": pa.array(list(label) if label.ndim == 2 else label, _label_type(e)),
                    "path": pa.array(paths[start:stop] if paths is not None else [None] * len(block),
                                     pa.string()),
                    "embedding": rows}, schema=schema))
        _publish([path])
    finally:
        tmp.unlink(missing_ok=True)
    return [path]


def _faiss_index(d: int, n: int, kind: str, train: np.ndarray | None):
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    nlist = max(1, min(65536, int(4 * np.sqrt(n))))
    m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if d % m == 0 and m <= d)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.nprobe = min(nlist, 32)
    return index


def _normalised(block: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(block, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _write_faiss(e: EmbeddingSet, encoder: str, split: str, out: Path, kind: str) -> list[Path]:
    """DIR/<E>_<S>.faiss and its ids (see the module's text)."""
    import faiss

    n, d = e.shape
    train = None
    if kind == "ivfpq":  # trained on a seeded sample of the rows, as many as faiss asks for
        pick = np.sort(np.random.default_rng(0).choice(n, min(n, 256 * max(1, int(4 * np.sqrt(n)))),
                                                       replace=False))
        train = _normalised(e.rows(pick))
    index = _faiss_index(d, n, kind, train)
    for start, block in e.row_blocks():
        index.add_with_ids(_normalised(block), np.arange(start, start + len(block), dtype=np.int64))
    index_path, ids_path = out / f"{encoder}_{split}.faiss", out / f"{encoder}_{split}.ids.tsv"
    try:
        faiss.write_index(index, str(index_path.with_name(index_path.name + ".tmp")))
        digits, labels, paths = _keys(e), e.labels, e.paths
        label = ([",".join(map(str, np.flatnonzero(r))) for r in labels] if labels.ndim == 2
                 else labels.tolist())
        lines = ["id\tkey\tlabel\tpath"] + [f"{i}\t{i:0{digits}d}\t{label[i]}\t{paths[i] if paths else ''}"
                                               for i in range(n)]
        _write_small(ids_path.with_name(ids_path.name + ".tmp"), ("\n".join(lines) + "\n").encode("utf-8"))
        _publish([ids_path, index_path])
    finally:
        for p in (index_path, ids_path):
            p.with_name(p.name + ".tmp").unlink(missing_ok=True)
    return [ids_path, index_path]


def export(store: Path | str, encoder: str, split: str, *, out: Path | str, order: str = "index",
           fmt: str = "npy", faiss_index: str = "flat") -> list[Path | str]:
    """Write (encoder, split) as `fmt` files, each whole or not at all; return where they went."""
    if fmt != "npy" and order != "index":
        raise UserError(f"--order {order}: only the npy layout has a row order to choose; the {fmt} export "
                        "holds each row's index and key")
    e = open_embeddings(store, encoder, split)
    perm = row_order(e, order)  # refused before anything is made
    if not remote.is_url(out):
        return _export(e, encoder, split, remote.local(out), perm=perm, fmt=fmt, faiss_index=faiss_index)
    remote.check(str(out), write=True)
    stage = Path(tempfile.mkdtemp(prefix="export-", dir=_stage_root(str(out))))
    try:
        made = _export(e, encoder, split, stage, perm=perm, fmt=fmt, faiss_index=faiss_index)
        for p in made:  # in the same order: the embeddings (or the index) last
            remote.put_file(p, remote.join(str(out), p.name))
        return [remote.join(str(out), p.name) for p in made]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _stage_root(url: str) -> Path:
    from shard.reader import default_cache

    root = default_cache(url)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _export(e: EmbeddingSet, encoder: str, split: str, out: Path, *, perm: np.ndarray | None, fmt: str,
            faiss_index: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        return _write_parquet(e, encoder, split, out)
    if fmt == "faiss":
        return _write_faiss(e, encoder, split, out, faiss_index)
    return _write_npy(e, encoder, split, out, perm)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embed.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", type=location, required=True, help="a folder or a URL")
    p.add_argument("--format", choices=FORMATS, default="npy",
                   help="npy (default: the reference's files), parquet, or faiss (an index and its ids)")
    p.add_argument("--faiss-index", choices=FAISS_INDEXES, default="flat",
                   help="with --format faiss: flat (exact, default) or ivfpq (approximate, for millions)")
    p.add_argument("--order", choices=ORDERS, default="index",
                   help="index (default: ImageFolder order) or seed (the reference's own row order)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export one (encoder, split); exit status 1 with a clear message on a bad store."""
    run = lambda a: export(a.store, a.encoder, a.split, out=a.out, order=a.order, fmt=a.format,  # noqa: E731
                           faiss_index=a.faiss_index)
    return command(_parse, run, argv, logger="embed",
                   done=lambda _, written: log.info("wrote %s", ", ".join(map(str, written))))


if __name__ == "__main__":
    sys.exit(main())
