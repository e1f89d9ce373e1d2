"""python -m embed.verify: a sound store passes; a flipped byte, a garbage chunk and a deleted
chunk are each named; --repair plus a rerun of embed restores the exact rows."""

import shutil

import numpy as np
import pytest

from embed import store
from embed.__main__ import main as embed_main
from embed.verify import main

ARGS = ["--split", "val", "--encoder", "tiny_a", "--weights", "random", "--batch-size", "4", "--threads", "2"]


@pytest.fixture
def built(embed_shards, tiny_encoders, tmp_path):
    out = tmp_path / "s.zarr"
    assert embed_main([str(embed_shards), *ARGS, "--out", str(out)]) == 0
    return embed_shards, out


def _chunk(out, array, shard):
    return out / "tiny_a" / "val" / array / "c" / str(shard) / ("0" if array == "embeddings" else "")


def test_a_sound_store_passes(built, caplog):
    _, out = built
    assert main([str(out)]) == 0
    assert "tiny_a/val: ok, every chunk of the 5 shards marked done read back" in caplog.text


def test_damage_is_named_and_repaired_by_a_rerun(built, caplog):
    shards, out = built
    want = np.asarray(store.open_embeddings(out, "tiny_a", "val").embeddings[:])
    flipped = _chunk(out, "embeddings", 1)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x04
    flipped.write_bytes(bytes(data))
    _chunk(out, "embeddings", 2).write_bytes(b"\x00garbage" * 9)
    _chunk(out, "embeddings", 3).unlink()
    (out / "tiny_a" / "val" / "paths" / "c" / "4").write_bytes(b"x")
    assert main([str(out)]) == 1
    log = caplog.text
    assert "shard 1, embeddings: chunk fails to decode (ValueError: Stored and computed checksum" in log
    assert "shard 2, embeddings: chunk fails to decode" in log
    assert "shard 3, embeddings: marked done but never written (chunk missing)" in log
    assert "shard 4, paths: chunk fails to decode" in log
    assert "shard 0" not in log
    assert main([str(out), "--repair"]) == 1
    assert "unmarked shards [1, 2, 3, 4]; rerun python -m embed" in caplog.text
    assert store.done_shards(store.open_group(out, "tiny_a", "val")).tolist() == [True] + [False] * 4
    assert embed_main([str(shards), *ARGS, "--out", str(out)]) == 0
    caplog.clear()
    assert main([str(out)]) == 0
    e = store.open_embeddings(out, "tiny_a", "val")
    np.testing.assert_array_equal(np.asarray(e.embeddings[:]), want)
    assert e.paths[16] == "class2/rotated.JPEG"


def test_non_finite_rows_are_named(built, caplog, tmp_path):
    _, out = built
    g = store.open_group(out, "tiny_a", "val", mode="a")
    g["embeddings"][5:7] = np.nan  # as an older writer, or a tool writing zarr directly, could
    assert main([str(out), "--encoder", "tiny_a"]) == 1
    assert "shard 1, embeddings: 2 of 4 rows are not finite" in caplog.text


def test_bad_arguments_get_one_line(built, caplog, tmp_path):
    _, out = built
    assert main([str(out), "--split", "train"]) == 1
    assert "no group matches --encoder None --split train" in caplog.text
    assert main([str(tmp_path / "nothing")]) == 1
    assert "not a Zarr store" in caplog.text
    shutil.rmtree(out)
