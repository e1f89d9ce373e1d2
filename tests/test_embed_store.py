"""embed.store, embed.export, embed.from_npy, embed.info: layout and round trips."""

import numpy as np
import pytest

from embed import store
from embed.export import main as export_main
from embed.from_npy import main as from_npy_main
from embed.info import describe
from embed.info import main as info_main


def _group(tmp_path, n=10, d=4, k=4):
    layout = store.Layout(n, d, k, store.num_shards(n, k))
    labels = np.arange(n, dtype=np.int32) % 3
    g = store.create_group(tmp_path / "s.zarr", "enc", "val", layout, labels,
                           [f"c/{i}.jpg" for i in range(n)], {"identity": {"a": 1}})
    return g, layout


def test_chunks_align_with_shards(tmp_path):
    g, layout = _group(tmp_path)
    assert g["embeddings"].chunks == (4, 4) and g["shards_done"].chunks == (1,)
    assert layout.num_shards == 3 and not store.done_shards(g).any()


def test_rows_done_and_complete(tmp_path):
    g, _ = _group(tmp_path)
    rows = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    for s, lo in enumerate((0, 4, 8)):
        assert not store.mark_complete_if_done(g)
        with pytest.raises(store.StoreError, match=rf"incomplete \({s} of 3 shards"):
            store.open_embeddings(tmp_path / "s.zarr", "enc", "val")
        store.write_rows(g, s, lo, rows[lo : lo + 4])
    assert store.mark_complete_if_done(g)
    e = store.open_embeddings(tmp_path / "s.zarr", "enc", "val")
    np.testing.assert_array_equal(e.embeddings[:], rows)
    assert e.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] and e.paths[3] == "c/3.jpg"
    blocks = list(e.row_blocks(rows=5))  # chunk-aligned: 4 rows per block
    assert [s for s, _ in blocks] == [0, 4, 8]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), rows)


def test_identity_mismatch_and_missing_groups(tmp_path):
    g, _ = _group(tmp_path)
    assert store.identity_mismatch(g, {"a": 1}) == []
    assert store.identity_mismatch(g, {"a": 2}) == ["a: 1 != 2"]
    with pytest.raises(store.StoreError, match="no enc/train .the store holds: enc/val"):
        store.open_embeddings(tmp_path / "s.zarr", "enc", "train")


def test_export_then_from_npy_round_trip(tmp_path):
    g, _ = _group(tmp_path)
    rows = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    for s, lo in enumerate((0, 4, 8)):
        store.write_rows(g, s, lo, rows[lo : lo + 4])
    store.mark_complete_if_done(g)
    assert export_main([str(tmp_path / "s.zarr"), "--encoder", "enc", "--split", "val",
                        "--out", str(tmp_path / "npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "embeddings_enc_val.npy"), rows)
    assert np.load(tmp_path / "npy" / "labels_val.npy").dtype == np.int64
    assert (tmp_path / "npy" / "filepaths_val.txt").read_text().splitlines()[2] == "c/2.jpg"
    np.save(tmp_path / "npy" / "embeddings_enc_train.npy", rows[:6])  # a second split, no paths
    np.save(tmp_path / "npy" / "labels_train.npy", np.arange(6))
    assert from_npy_main([str(tmp_path / "npy"), "--encoder", "enc", "--out", str(tmp_path / "b.zarr")]) == 0
    for split, want in (("val", rows), ("train", rows[:6])):
        e = store.open_embeddings(tmp_path / "b.zarr", "enc", split)
        np.testing.assert_array_equal(e.embeddings[:], want)
    assert store.open_embeddings(tmp_path / "b.zarr", "enc", "val").paths[2] == "c/2.jpg"
    assert describe(tmp_path / "b.zarr") == [
        "enc/train: 6 x 4 float32, cls_prenorm, ?, complete",
        "enc/val: 10 x 4 float32, cls_prenorm, ?, complete"]


def test_from_npy_refuses_bad_input(tmp_path, caplog):
    (tmp_path / "d").mkdir()
    assert from_npy_main([str(tmp_path / "d"), "--encoder", "enc", "--out", str(tmp_path / "x")]) == 1
    assert "no embeddings_enc_<split>.npy found" in caplog.text
    np.save(tmp_path / "d" / "embeddings_enc_val.npy", np.zeros((5, 3), np.float32))
    np.save(tmp_path / "d" / "labels_val.npy", np.zeros(4))
    assert from_npy_main([str(tmp_path / "d"), "--encoder", "enc", "--out", str(tmp_path / "x")]) == 1
    assert "do not match" in caplog.text


def test_info_names_incomplete_groups(tmp_path, capsys):
    _group(tmp_path)
    assert info_main([str(tmp_path / "s.zarr")]) == 0
    assert "enc/val: 10 x 4 float32" in capsys.readouterr().out
    assert "INCOMPLETE: 0/3 shards" in describe(tmp_path / "s.zarr")[0]
    assert info_main([str(tmp_path / "none")]) == 1
