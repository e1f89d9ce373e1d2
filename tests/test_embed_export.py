"""python -m embed.export: whole files or none (a kill, a full disk), and the reference's row
order, tested against the DistributedSampler its compute_embeddings.py reads through."""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embed import store
from embed.export import main as export_main

ROOT = Path(__file__).parents[1]


def _store(path: Path, n: int, d: int, value: float) -> Path:
    layout = store.Layout(n, d, 1000, store.num_shards(n, 1000))
    rng = np.random.default_rng(int(value))

    def fill(g):
        for s in range(layout.num_shards):
            lo, hi = s * 1000, min(n, (s + 1) * 1000)
            rows = value + rng.normal(size=(hi - lo, d)).astype(np.float32)
            store.write_shard(g, s, lo, rows=rows, labels=np.arange(lo, hi) % 7,
                              paths=[f"c{i % 7}/{i}.jpg" for i in range(lo, hi)])
        store.mark_complete_if_done(g)

    store.create_group(path, "enc", "train", layout=layout, attrs={"identity": {"v": value}}, fill=fill)
    return path


def _export_args(src: Path, out: Path) -> list[str]:
    return [str(src), "--encoder", "enc", "--split", "train", "--out", str(out)]


KILLED_AT = """import os, signal, sys
import embed.export as export, embed.store as store
point = sys.argv.pop(1)
if point == "rows":  # kill -9 after the first block of rows is written
    blocks = store.EmbeddingSet.row_blocks
    def one_then_die(self, rows=65536):
        for block in blocks(self, 1000):  # 3 blocks: the first written, then the kill
            yield block
            os.kill(os.getpid(), signal.SIGKILL)
    store.EmbeddingSet.row_blocks = one_then_die
else:  # kill -9 once every file is written, before the first rename
    export.fsync_rename = lambda tmp, final: os.kill(os.getpid(), signal.SIGKILL)
sys.exit(export.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("point", ["rows", "renames"])
def test_a_killed_export_leaves_the_earlier_one_whole(tmp_path, point):
    """kill -9 mid-export: the files under their final names are still the first export (once a
    full-size file of zeros beside the old labels), and a rerun finishes the second."""
    a, b = _store(tmp_path / "a.zarr", 3000, 16, 1.0), _store(tmp_path / "b.zarr", 3000, 16, 5.0)
    out = tmp_path / "npy"
    assert export_main(_export_args(a, out)) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    run = subprocess.run([sys.executable, "-c", KILLED_AT, point, *_export_args(b, out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.endswith(".tmp")} == first
    assert export_main(_export_args(b, out)) == 0
    np.testing.assert_array_equal(np.load(out / "embeddings_enc_train.npy"),
                                  np.asarray(store.open_embeddings(b, "enc", "train").embeddings[:]))
    assert not list(out.glob("*.tmp"))


def test_a_full_disk_is_one_line_and_the_earlier_export_is_kept(tmp_path):
    a, b = _store(tmp_path / "a.zarr", 3000, 16, 1.0), _store(tmp_path / "b.zarr", 3000, 16, 5.0)
    out = tmp_path / "npy"
    assert export_main(_export_args(a, out)) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    limited = ("import resource, signal, sys, runpy; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); sys.argv = sys.argv[1:]; "
               "runpy.run_module('embed.export', run_name='__main__', alter_sys=True)")
    run = subprocess.run([sys.executable, "-c", limited, "embed.export", *_export_args(b, out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "free space" in run.stderr, run.stderr
    assert "embeddings_enc_train.npy.tmp" in run.stderr  # it names the file (once SIGBUS, exit 135)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_order_seed_is_the_references_distributed_sampler(tmp_path, tiny_encoders):
    """The reference's rows are the order its DataLoader's DistributedSampler yields (one replica,
    shuffle on, seed 0) over torchvision's ImageFolder: the sampler itself is the oracle."""
    import torch
    from torchvision.datasets import ImageFolder

    from embed.__main__ import main as embed_main
    from shard.__main__ import main as shard_main
    from tests.conftest import make_folder

    make_folder(tmp_path / "src" / "train", ["n01", "n02", "n03"], per_class=7)
    assert shard_main([str(tmp_path / "src"), str(tmp_path / "shards"), "--samples-per-shard", "5",
                       "--workers", "1"]) == 0
    assert embed_main([str(tmp_path / "shards"), "--split", "train", "--encoder", "tiny_a", "--weights",
                       "random", "--out", str(tmp_path / "s.zarr"), "--batch-size", "4"]) == 0
    for order in ("index", "seed"):
        assert export_main([str(tmp_path / "s.zarr"), "--encoder", "tiny_a", "--split", "train", "--out",
                            str(tmp_path / order), "--order", order]) == 0
    dataset = ImageFolder(tmp_path / "src" / "train")
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=1, rank=0)
    want = list(iter(sampler))
    assert want != sorted(want)
    paths = (tmp_path / "seed" / "filepaths_train.txt").read_text().splitlines()
    assert paths == [str(Path(dataset.samples[i][0]).relative_to(tmp_path / "src" / "train")) for i in want]
    assert np.load(tmp_path / "seed" / "labels_train.npy").tolist() == [dataset.targets[i] for i in want]
    rows, index = (np.load(tmp_path / o / "embeddings_tiny_a_train.npy") for o in ("seed", "index"))
    np.testing.assert_array_equal(rows, index[want])


def test_order_seed_is_refused_where_the_reference_could_not_have_made_it(tmp_path, caplog):
    a = _store(tmp_path / "a.zarr", 10, 4, 1.0)
    g = store.open_group(a, "enc", "train", mode="a")
    g.attrs.update({"imported_from": "/data/npy"})
    assert export_main(_export_args(a, tmp_path / "x") + ["--order", "seed"]) == 1
    assert "was imported" in caplog.text
    g.attrs.update({"imported_from": None, "skipped_files": 3})
    assert export_main(_export_args(a, tmp_path / "x") + ["--order", "seed"]) == 1
    assert "skipped 3 files" in caplog.text and not (tmp_path / "x").exists()


@pytest.mark.parametrize("order", ["index", "seed"])
def test_a_large_export_holds_little_memory(tmp_path, order):
    """Streamed in blocks, and in seed order by writing each row at its place: the peak memory of
    exporting 150,000 x 256 rows (154 MB) stays far below the array's size."""
    src = _store(tmp_path / "a.zarr", 150_000, 256, 1.0)
    code = ("import resource, sys; from embed.export import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    before = subprocess.run([sys.executable, "-c", "import resource, embed.export, embed.store, zarr, torch; "
                             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"], cwd=ROOT,
                            capture_output=True, text=True)
    run = subprocess.run([sys.executable, "-c", code, *_export_args(src, tmp_path / "x"), "--order", order],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    grown_mb = (int(run.stdout.split()[-1]) - int(before.stdout.split()[-1])) / 1024
    assert grown_mb < 90, grown_mb
    rows = np.load(tmp_path / "x" / "embeddings_enc_train.npy", mmap_mode="r")
    assert rows.shape == (150_000, 256)
