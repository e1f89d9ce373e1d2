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


def _swap(a, b):
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def test_two_chunks_swapped_are_found_and_refused_by_every_reader(built, caplog):
    """Each chunk's crc32c holds: only the shard digests, which cover the place, see the swap."""
    from probe.knn import main as knn_main

    _, out = built
    _swap(_chunk(out, "embeddings", 0), _chunk(out, "embeddings", 1))
    assert main([str(out)]) == 1
    assert "shard 0, embeddings: not what was written there" in caplog.text
    assert "shard 1, embeddings: not what was written there" in caplog.text
    e = store.open_embeddings(out, "tiny_a", "val")
    with pytest.raises(store.StoreError, match="shard 0's embeddings are not what was written there"):
        e.require_finite()
    assert knn_main([str(out), "--encoder", "tiny_a", "--train-split", "val", "--test-split", "val",
                     "--k", "1"]) == 1


def test_a_labels_chunk_replaced_by_another_valid_one_is_found(built, caplog):
    _, out = built
    _chunk(out, "labels", 1).write_bytes(_chunk(out, "labels", 3).read_bytes())  # class 0s for class 1s
    assert main([str(out)]) == 1 and "shard 1, labels: not what was written there" in caplog.text
    with pytest.raises(store.StoreError, match="shard 1's labels are not what was written there"):
        _ = store.open_embeddings(out, "tiny_a", "val").labels


def test_a_deleted_paths_chunk_never_exports_empty_lines(built, tmp_path, caplog):
    from embed.export import main as export_main

    _, out = built
    _chunk(out, "paths", 2).unlink()
    assert main([str(out)]) == 1 and "shard 2, paths: marked done but never written" in caplog.text
    assert export_main([str(out), "--encoder", "tiny_a", "--split", "val", "--out", str(tmp_path / "x")]) == 1
    assert "shard 2's paths are not what was written there" in caplog.text
    assert not (tmp_path / "x" / "filepaths_val.txt").exists()


def test_an_edited_array_shape_is_refused_in_one_line(built, tmp_path, caplog):
    import json

    from embed.export import main as export_main

    _, out = built
    meta = out / "tiny_a" / "val" / "embeddings" / "zarr.json"
    m = json.loads(meta.read_text())
    m["shape"][0] = 12  # of 17: knn and export once used 12 rows with exit 0
    meta.write_text(json.dumps(m))
    assert export_main([str(out), "--encoder", "tiny_a", "--split", "val", "--out", str(tmp_path / "x")]) == 1
    assert "embeddings has shape (12, 32), its layout says (17, 32)" in caplog.text
    assert main([str(out)]) == 1


def test_a_lost_or_garbled_group_zarr_json_is_named(built, embed_shards, caplog):
    _, out = built
    meta = out / "tiny_a" / "val" / "zarr.json"
    text = meta.read_text()
    meta.unlink()
    assert main([str(out)]) == 1
    assert "tiny_a/val: zarr.json is missing" in caplog.text
    assert embed_main([str(embed_shards), *ARGS, "--out", str(out)]) == 1
    assert "its zarr.json is missing" in caplog.text
    assert "--overwrite" not in caplog.text.split("zarr.json is")[-1]
    meta.write_text(text[:40])
    for command in ([str(out)], [str(out), "--repair"]):
        caplog.clear()
        assert main(command) == 1
        assert "zarr.json: damaged (JSONDecodeError" in caplog.text and "Traceback" not in caplog.text
