"""embed.export --format parquet and --format faiss: read back by pyarrow, pandas and duckdb
themselves, and faiss's neighbours against probe.knn's; the parquet export streams."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embed.export import main as export_main
from embed.store import open_embeddings
from tests.test_embed_export import _export_args, _store

ROOT = Path(__file__).parents[1]


def test_parquet_reads_back_equal_in_pyarrow_pandas_and_duckdb(tmp_path):
    src = _store(tmp_path / "s.zarr", 2500, 24, 1.0)  # three shards
    assert export_main(_export_args(src, tmp_path / "pq") + ["--format", "parquet"]) == 0
    e = open_embeddings(src, "enc", "train")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq" / "enc_train.parquet")
    assert table.column_names == ["key", "index", "split", "label", "path", "embedding"]
    rows = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert np.array_equal(rows, np.asarray(e.embeddings[:]))
    frame = table.to_pandas()
    assert frame["label"].tolist() == e.labels.tolist() and frame["path"].tolist() == e.paths
    assert frame["key"].iloc[7] == "00000007" and set(frame["split"]) == {"train"}
    duckdb = pytest.importorskip("duckdb")
    ((count, label),) = duckdb.sql(f"select count(*), sum(label) from "
                                   f"'{tmp_path / 'pq' / 'enc_train.parquet'}'").fetchall()
    assert (count, label) == (2500, int(e.labels.sum()))


def test_the_faiss_index_finds_probe_knns_neighbours(tmp_path):
    faiss = pytest.importorskip("faiss")
    import torch

    from probe.knn import top_neighbours

    src = _store(tmp_path / "s.zarr", 1200, 32, 0.0)
    assert export_main(_export_args(src, tmp_path / "fx") + ["--format", "faiss"]) == 0
    index = faiss.read_index(str(tmp_path / "fx" / "enc_train.faiss"))
    e = open_embeddings(src, "enc", "train")
    queries = np.asarray(e.embeddings[:50])
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims, ids = index.search(queries.astype(np.float32), 10)
    want_sims, want_ids = top_neighbours(e, torch.from_numpy(queries), 10)
    assert np.array_equal(ids, want_ids.numpy()) and np.allclose(sims, want_sims.numpy(), atol=1e-5)
    ids_file = (tmp_path / "fx" / "enc_train.ids.tsv").read_text().splitlines()
    assert ids_file[0] == "id\tkey\tlabel\tpath"
    assert ids_file[8] == f"7\t00000007\t{e.labels[7]}\t{e.paths[7]}"


def test_ivfpq_finds_most_neighbours_and_seed_order_is_npy_only(tmp_path, caplog):
    faiss = pytest.importorskip("faiss")
    src = _store(tmp_path / "s.zarr", 3000, 32, 0.0)
    ivfpq = ["--format", "faiss", "--faiss-index", "ivfpq"]
    assert export_main(_export_args(src, tmp_path / "iv") + ivfpq) == 0
    index = faiss.read_index(str(tmp_path / "iv" / "enc_train.faiss"))
    rows = np.asarray(open_embeddings(src, "enc", "train").embeddings[:100])
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    _, ids = index.search(rows, 1)
    assert (ids[:, 0] == np.arange(100)).mean() >= 0.8  # approximate: a row finds itself mostly
    assert export_main(_export_args(src, tmp_path / "x") + ["--format", "parquet", "--order", "seed"]) == 1
    assert "--order seed: only the npy layout" in caplog.text and not (tmp_path / "x").exists()


PEAK = """import sys
from embed.export import export
export(sys.argv[1], "enc", "train", out=sys.argv[2], fmt=sys.argv[3])
# VmHWM, this process's own peak (ru_maxrss starts from the parent's RSS at the fork)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) // 1024)
"""


@pytest.mark.slow
def test_the_parquet_export_streams_row_groups(tmp_path):
    """600,000 x 256 float32 rows (614 MB) in shards of 1,000 export holding a few row groups and
    what the readers and the writer keep (about 350 MB at any N; 1.28M x 1024 is in docs/)."""
    from embed import store

    n, d, k = 600_000, 256, 1000
    layout = store.Layout(n, d, k, store.num_shards(n, k), paths=False)

    def fill(g):
        rng = np.random.default_rng(0)
        for s in range(layout.num_shards):
            rows = rng.normal(size=(k, d)).astype(np.float32)
            store.write_shard(g, s, s * k, rows=rows, labels=np.zeros(k, int), paths=None)
        store.mark_complete_if_done(g)

    big = tmp_path / "big.zarr"
    store.create_group(big, "enc", "train", layout=layout, attrs={"identity": {}}, fill=fill)
    run = subprocess.run([sys.executable, "-c", PEAK, str(big), str(tmp_path / "pq"), "parquet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    peak = int(run.stdout.split()[-1])
    assert (tmp_path / "pq" / "enc_train.parquet").stat().st_size > n * d * 4 * 0.9
    assert peak < 450, peak  # MB, start-up included; the rows alone are 614 MB
