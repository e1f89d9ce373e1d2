"""python -m embed from shards on object storage into a store on object storage, against a real
S3 API (moto's server on a local port): the rows, labels and paths are the local run's, probes
read the remote store, a kill resumes."""

import numpy as np
import pytest

from embed.__main__ import main as embed_main
from embed.store import open_embeddings
from shard.__main__ import main as shard_main
from tests.conftest import make_folder


@pytest.fixture
def shards(tmp_path, s3):
    """The same split sharded locally and published to the bucket: (local folder, URL)."""
    make_folder(tmp_path / "src" / "train", ["a", "b", "c"], per_class=5)
    make_folder(tmp_path / "src" / "val", ["a", "b", "c"], per_class=3)
    args = ["--samples-per-shard", "4", "--workers", "1"]
    assert shard_main([str(tmp_path / "src"), str(tmp_path / "shards"), *args]) == 0
    assert shard_main([str(tmp_path / "src"), f"{s3}/shards", *args]) == 0
    return tmp_path / "shards", f"{s3}/shards"


def _embed(shards, out, *extra) -> int:
    return embed_main([str(shards), "--split", "train", "--encoder", "tiny_a", "--weights", "random",
                       "--out", str(out), "--batch-size", "3", "--threads", "2", *extra])


def test_remote_shards_into_a_remote_store_give_the_local_rows(shards, tmp_path, s3, tiny_encoders):
    local, url = shards
    assert _embed(local, tmp_path / "local.zarr") == 0
    assert _embed(url, f"{s3}/e.zarr", "--cache-gb", "0.00005") == 0  # a group of one shard at a time
    want, got = (open_embeddings(s, "tiny_a", "train") for s in (tmp_path / "local.zarr", f"{s3}/e.zarr"))
    assert np.array_equal(np.asarray(got.embeddings[:]), np.asarray(want.embeddings[:]))
    assert got.labels.tolist() == want.labels.tolist() and got.paths == want.paths
    assert got.attrs["complete"] and got.attrs["shards"] == f"{url}/train"
    assert not list((tmp_path / "cache").rglob("*.tar"))  # every fetched tar removed once embedded
    assert _embed(url, f"{s3}/e.zarr") == 0  # a second run finds every shard done


def _both(shards, tmp_path, s3, *extra):
    """Both splits embedded from local shards into a local store and from the bucket's into the bucket."""
    local, url = shards
    for split in ("train", "val"):
        for src, out in ((local, tmp_path / "local.zarr"), (url, f"{s3}/e.zarr")):
            assert embed_main([str(src), "--split", split, "--encoder", "tiny_a", "--weights", "random",
                               "--out", str(out), "--batch-size", "3", "--threads", "2", *extra]) == 0
    return tmp_path / "local.zarr", f"{s3}/e.zarr"


def test_probes_read_a_remote_store_as_a_local_one(shards, tmp_path, s3, tiny_encoders):
    from probe.__main__ import main as probe_main
    from probe.knn import main as knn_main
    from probe.results import read_results

    local, remote_store = _both(shards, tmp_path, s3)
    for store, out in ((local, tmp_path / "p_local"), (remote_store, tmp_path / "p_remote")):
        args = ["--encoder", "tiny_a", "--per-class", "1-2", "--seeds", "0-1", "--out", str(out)]
        assert probe_main([str(store), *args]) == 0
        assert knn_main([str(store), "--encoder", "tiny_a", "--k", "1,3", "--out", str(out)]) == 0
    for kind in ("fewshot", "knn"):
        a, b = (read_results(tmp_path / d / f"{kind}.csv") for d in ("p_local", "p_remote"))
        drop = lambda rows: [{k: v for k, v in r.items() if k != "fit_seconds"} for r in rows]  # noqa: E731
        assert drop(a) == drop(b)


def test_verify_and_export_take_urls(shards, tmp_path, s3, tiny_encoders, caplog):
    from embed.export import main as export_main
    from embed.verify import main as verify_main
    from msnpipe import remote
    from tests.conftest import tree_bytes

    local, remote_store = _both(shards, tmp_path, s3)
    assert verify_main([remote_store]) == 0
    for out, store in ((tmp_path / "x_local", local), (f"{s3}/export", remote_store)):
        assert export_main([str(store), "--encoder", "tiny_a", "--split", "train", "--out", str(out)]) == 0
    assert tree_bytes(f"{s3}/export") == tree_bytes(tmp_path / "x_local")
    remote.remove(f"{remote_store}/tiny_a/train/embeddings/c/1/0")  # shard 1's rows, gone
    assert verify_main([remote_store]) == 1
    assert "tiny_a/train: shard 1, embeddings: marked done but never written (chunk missing)" in caplog.text
    assert verify_main([remote_store, "--repair"]) == 1
    assert not open_embeddings(remote_store, "tiny_a", "train", require_complete=False).attrs["complete"]
    assert _embed(shards[1], remote_store) == 0 and verify_main([remote_store]) == 0  # rewritten


def test_a_second_writer_on_a_remote_group_is_refused_naming_the_first(shards, s3, tiny_encoders, caplog):
    from embed.store import writer_lock

    with writer_lock(f"{s3}/e.zarr", "tiny_a", "train"):
        assert _embed(shards[1], f"{s3}/e.zarr") == 1
    assert f"{s3}/e.zarr: tiny_a/train is being written by pid " in caplog.text
    assert f"lock object {s3}/e.zarr/.locks/tiny_a--train.lock" in caplog.text
    assert _embed(shards[1], f"{s3}/e.zarr") == 0  # released: the lock object is gone


def test_imports_go_to_a_remote_store(tmp_path, s3):
    from embed.from_npy import main as from_npy_main

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("val", 12)):
        np.save(tmp_path / f"embeddings_r_{split}.npy", rng.normal(size=(n, 8)).astype(np.float32))
        np.save(tmp_path / f"labels_{split}.npy", rng.integers(0, 3, n))
    assert from_npy_main([str(tmp_path), "--encoder", "r", "--out", f"{s3}/i.zarr"]) == 0
    e = open_embeddings(f"{s3}/i.zarr", "r", "train")
    assert np.array_equal(np.asarray(e.embeddings[:]), np.load(tmp_path / "embeddings_r_train.npy"))
    again = from_npy_main([str(tmp_path), "--encoder", "r", "--out", f"{s3}/i.zarr"])
    assert again == 0  # the same files: skipped
    from embed.verify import main as verify_main

    assert verify_main([f"{s3}/i.zarr"]) == 0  # bare .npy, no filepaths: a valid store


KILL_AFTER_SHARDS = """
import os, sys
import embed.store as store
real, count = store.write_shard, [0]
def write(*a, **k):
    real(*a, **k)
    count[0] += 1
    if count[0] == 2:
        os.kill(os.getpid(), 9)
store.write_shard = write
from embed.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_mid_remote_embed_then_rerun_gives_the_local_rows(shards, tmp_path, s3, s3_server):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import s3_environment

    local, url = shards
    args = ["--split", "train", "--encoder", "vits16_800ep", "--weights", "random", "--batch-size", "3",
            "--threads", "2", "--device", "cpu"]
    assert embed_main([str(local), *args, "--out", str(tmp_path / "local.zarr")]) == 0
    env = dict(os.environ) | s3_environment(s3_server)
    run = subprocess.run([sys.executable, "-c", KILL_AFTER_SHARDS, url, *args, "--out", f"{s3}/e.zarr"],
                         cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    half = open_embeddings(f"{s3}/e.zarr", "vits16_800ep", "train", require_complete=False)
    assert int(np.asarray(half.group["shards_done"][:]).sum()) == 2 and not half.attrs["complete"]
    assert embed_main([url, *args, "--out", f"{s3}/e.zarr"]) == 0  # the dead process's lock is taken over
    want, got = (open_embeddings(s, "vits16_800ep", "train")
                 for s in (tmp_path / "local.zarr", f"{s3}/e.zarr"))
    assert np.allclose(np.asarray(got.embeddings[:]), np.asarray(want.embeddings[:]), atol=1e-5)
