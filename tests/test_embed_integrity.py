"""python -m embed under faults: non-finite rows, half-made groups, two writers, uneven
resume, damaged shards and weights. Each case once gave a wrong answer with exit 0."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embed import store
from embed.__main__ import main
from embed.store import open_embeddings

ROOT = Path(__file__).parents[1]


def _args(shards, out, encoder="tiny_a", *extra):
    return [str(shards), "--split", "val", "--encoder", encoder, "--weights", "random", "--out", str(out),
            "--batch-size", "4", "--threads", "2", *extra]


@pytest.fixture(scope="module")
def reference(embed_shards, tmp_path_factory):
    """tiny_a rows of the 17 images from an uninterrupted run."""
    from embed.encoders import ENCODERS, EncoderSpec
    mp = pytest.MonkeyPatch()
    mp.setattr("embed.encoders.ENCODERS",
               ENCODERS | {"tiny_a": EncoderSpec("tiny_a", "test_tiny", patch=16, dim=32, depth=2, heads=2)})
    out = tmp_path_factory.mktemp("ref") / "r.zarr"
    assert main(_args(embed_shards, out)) == 0
    mp.undo()
    return np.asarray(open_embeddings(out, "tiny_a", "val").embeddings[:])


def test_non_finite_rows_are_refused_naming_samples_and_nothing_is_marked_done(
        embed_shards, tiny_encoders, tmp_path, monkeypatch, caplog):
    from embed.models import Embedder
    forward = Embedder.forward
    monkeypatch.setattr(Embedder, "forward", lambda self, x: forward(self, x) * float("nan"))
    assert main(_args(embed_shards, tmp_path / "n.zarr")) == 1
    assert "not finite" in caplog.text and "sample 0 (class0/0.JPEG)" in caplog.text
    g = store.open_group(tmp_path / "n.zarr", "tiny_a", "val")
    assert not store.done_shards(g).any() and not g.attrs["complete"]


def test_a_create_that_failed_halfway_is_finished_by_a_rerun(embed_shards, tiny_encoders, reference,
                                                            tmp_path, monkeypatch):
    import zarr
    create = zarr.Group.create_array

    def failing(self, name, *a, **kw):
        if name == "shards_done":
            raise OSError("disk full")  # as a kill -9 would, after some arrays exist
        return create(self, name, *a, **kw)

    monkeypatch.setattr(zarr.Group, "create_array", failing)
    with pytest.raises(OSError, match="disk full"):
        main(_args(embed_shards, tmp_path / "h.zarr"))
    monkeypatch.setattr(zarr.Group, "create_array", create)
    assert main(_args(embed_shards, tmp_path / "h.zarr")) == 0
    np.testing.assert_array_equal(open_embeddings(tmp_path / "h.zarr", "tiny_a", "val").embeddings[:],
                                  reference)
    assert [s for _, s in store.list_groups(tmp_path / "h.zarr")] == ["val"]


def test_a_second_writer_of_a_group_is_refused_naming_the_first(embed_shards, tiny_encoders, tmp_path,
                                                               caplog):
    out = tmp_path / "w.zarr"
    with store.writer_lock(out, "tiny_a", "val"):
        assert main(_args(embed_shards, out)) == 1
    assert "tiny_a/val is being written by pid" in caplog.text
    assert main(_args(embed_shards, out)) == 0


def test_samples_tsv_cut_short_gets_one_line_and_no_group(embed_shards, tiny_encoders, tmp_path, caplog):
    shutil.copytree(embed_shards, tmp_path / "s")
    tsv = tmp_path / "s" / "val" / "samples.tsv"
    tsv.write_text("".join(tsv.read_text().splitlines(keepends=True)[:9]))
    assert main(_args(tmp_path / "s", tmp_path / "c.zarr")) == 1
    assert "samples.tsv: changed after the split was made" in caplog.text  # its sha256, before its rows
    assert store.open_group(tmp_path / "c.zarr", "tiny_a", "val") is None


def test_num_samples_edited_gets_one_line(embed_shards, tiny_encoders, tmp_path, caplog):
    shutil.copytree(embed_shards, tmp_path / "s")
    m = json.loads((tmp_path / "s" / "val" / "manifest.json").read_text())
    m["num_samples"] = 20
    (tmp_path / "s" / "val" / "manifest.json").write_text(json.dumps(m))
    assert main(_args(tmp_path / "s", tmp_path / "c.zarr")) == 1
    assert "num_samples is 20 but its shards hold 17" in caplog.text


def test_unexpected_errors_keep_their_traceback(embed_shards, tiny_encoders, tmp_path, monkeypatch):
    def boom(cfg):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr("embed.run.run", boom)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(_args(embed_shards, tmp_path / "x.zarr"))


def _torchrun(shards, out, port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "embed", str(shards), "--split", "val", "--encoder", "vits16_800ep", "--weights", "random",
           "--out", str(out), "--batch-size", "2", "--threads", "1", "--device", "cpu"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_torchrun_resume_deals_only_unfinished_shards(embed_shards, tmp_path):
    out = tmp_path / "u.zarr"
    assert main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights", "random",
                 "--out", str(out), "--batch-size", "2", "--threads", "2"]) == 0
    whole = np.asarray(open_embeddings(out, "vits16_800ep", "val").embeddings[:])
    g = store.open_group(out, "vits16_800ep", "val", mode="a")
    for s in (0, 2, 4):  # the shards rank 0 of 2 owned by i % 2; rank 1's are done
        g["shards_done"][s] = False
    g.attrs.update({"complete": False})
    r = _torchrun(embed_shards, out, 29541)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0/2: 2 shards to embed" in r.stderr and "rank 1/2: 1 shards to embed" in r.stderr
    e = open_embeddings(out, "vits16_800ep", "val")
    np.testing.assert_allclose(np.asarray(e.embeddings[:]), whole, rtol=1e-5, atol=1e-5)
