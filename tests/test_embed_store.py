"""embed.store, embed.export, embed.from_npy, embed.info: layout, round trips, atomic creation,
checksums and finiteness."""

import numpy as np
import pytest

from embed import store
from embed.export import main as export_main
from embed.from_npy import main as from_npy_main
from embed.info import describe
from embed.info import main as info_main


def _group(tmp_path, n=10, d=4, k=4, attrs=None):
    layout = store.Layout(n, d, k, store.num_shards(n, k))
    g = store.create_group(tmp_path / "s.zarr", "enc", "val", layout=layout,
                           attrs=attrs or {"identity": {"a": 1}})
    return g, layout


def _fill(g, rows, k=4):
    n = len(rows)
    for s, lo in enumerate(range(0, n, k)):
        hi = min(n, lo + k)
        store.write_shard(g, s, lo, rows=rows[lo:hi], labels=np.arange(lo, hi, dtype=np.int32) % 3,
                          paths=[f"c/{i}.jpg" for i in range(lo, hi)])


def test_chunks_align_with_shards_and_carry_checksums(tmp_path):
    g, layout = _group(tmp_path)
    assert g["embeddings"].chunks == (4, 4) and g["shards_done"].chunks == (1,)
    assert layout.num_shards == 3 and not store.done_shards(g).any()
    for name in ("embeddings", "labels", "paths", "shards_done"):
        assert "Crc32cCodec" in [type(c).__name__ for c in g[name].metadata.codecs], name


def test_rows_done_and_complete(tmp_path):
    g, _ = _group(tmp_path)
    rows = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    for s, lo in enumerate((0, 4, 8)):
        assert not store.mark_complete_if_done(g)
        with pytest.raises(store.StoreError, match=rf"incomplete \({s} of 3 shards"):
            store.open_embeddings(tmp_path / "s.zarr", "enc", "val")
        hi = min(10, lo + 4)
        store.write_shard(g, s, lo, rows=rows[lo:hi], labels=np.arange(lo, hi) % 3,
                          paths=[f"c/{i}.jpg" for i in range(lo, hi)])
    assert store.mark_complete_if_done(g)
    e = store.open_embeddings(tmp_path / "s.zarr", "enc", "val")
    np.testing.assert_array_equal(e.embeddings[:], rows)
    assert e.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] and e.paths[3] == "c/3.jpg"
    blocks = list(e.row_blocks(rows=5))  # chunk-aligned: 4 rows per block
    assert [s for s, _ in blocks] == [0, 4, 8]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), rows)
    np.testing.assert_array_equal(e.rows(np.array([7, 1, 7])), rows[[7, 1, 7]])


def test_non_finite_rows_are_never_written_nor_read(tmp_path):
    g, _ = _group(tmp_path)
    rows = np.ones((4, 4), np.float32)
    rows[2, 1] = np.inf
    with pytest.raises(store.StoreError, match=r"shard 1: 1 of 4 rows are not finite .*sample 6 \(c/6.jpg\)"):
        store.write_shard(g, 1, 4, rows=rows, labels=np.zeros(4), paths=[f"c/{i}.jpg" for i in range(4, 8)])
    assert not store.done_shards(g)[1]
    g["embeddings"][4:8] = rows  # as damage or an older writer could leave it
    _fill(g, np.ones((10, 4), np.float32))
    store.mark_complete_if_done(g)
    g["embeddings"][0:2] = np.nan
    e = store.open_embeddings(tmp_path / "s.zarr", "enc", "val")
    with pytest.raises(store.StoreError, match="shard 0's embeddings are not what was written there"):
        list(e.row_blocks())
    del g["digests"]  # as a group made by an older version, without digests or a layout
    del g.attrs["layout"]
    e = store.open_embeddings(tmp_path / "s.zarr", "enc", "val")
    with pytest.raises(store.StoreError, match="enc/val: 2 of 10 rows are not finite"):
        list(e.row_blocks())
    with pytest.raises(store.StoreError, match="2 of 10 rows are not finite"):
        e.rows(np.array([1, 5]))
    e.rows(np.array([5, 6]))  # the rows read are fine


def test_a_flipped_byte_fails_on_read(tmp_path):
    g, _ = _group(tmp_path)
    _fill(g, np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32))
    chunk = tmp_path / "s.zarr" / "enc" / "val" / "embeddings" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        g["embeddings"][4:8]


def test_creation_is_atomic_and_overwrite_replaces_the_whole_group(tmp_path, monkeypatch):
    import zarr
    create = zarr.Group.create_array

    def failing(self, name, *a, **kw):
        if name == "paths":
            raise OSError("killed")
        return create(self, name, *a, **kw)

    monkeypatch.setattr(zarr.Group, "create_array", failing)
    with pytest.raises(OSError):
        _group(tmp_path)
    monkeypatch.setattr(zarr.Group, "create_array", create)
    assert store.open_group(tmp_path / "s.zarr", "enc", "val") is None
    assert store.list_groups(tmp_path / "s.zarr") == []
    g, layout = _group(tmp_path, attrs={"identity": {"a": 1}, "stale": True})
    with pytest.raises(store.StoreError, match="enc/val already exists; pass --overwrite"):
        _group(tmp_path)
    g2 = store.create_group(tmp_path / "s.zarr", "enc", "val", layout=store.Layout(5, 3, 4, 2),
                            attrs={"identity": {}},
                            overwrite=True)
    assert g2["embeddings"].shape == (5, 3) and "stale" not in g2.attrs
    assert store.list_groups(tmp_path / "s.zarr") == [("enc", "val")]
    assert not list((tmp_path / "s.zarr" / ".tmp").iterdir())


def test_identity_mismatch_and_missing_groups(tmp_path):
    g, _ = _group(tmp_path)
    assert store.identity_mismatch(g, {"a": 1}) == []
    assert store.identity_mismatch(g, {"a": 2}) == ["a: 1 != 2"]
    with pytest.raises(store.StoreError, match="no enc/train .the store holds: enc/val"):
        store.open_embeddings(tmp_path / "s.zarr", "enc", "train")


def test_export_then_from_npy_round_trip(tmp_path):
    g, _ = _group(tmp_path)
    rows = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    _fill(g, rows)
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
        "enc/train: 6 x 4 float32, cls_prenorm, ?, 1/1 shards marked done",
        "enc/val: 10 x 4 float32, cls_prenorm, ?, 1/1 shards marked done"]


def test_from_npy_refuses_bad_input(tmp_path, caplog):
    (tmp_path / "d").mkdir()
    assert from_npy_main([str(tmp_path / "d"), "--encoder", "enc", "--out", str(tmp_path / "x")]) == 1
    assert "no embeddings_enc_<split>.npy found" in caplog.text
    np.save(tmp_path / "d" / "embeddings_enc_val.npy", np.zeros((5, 3), np.float32))
    np.save(tmp_path / "d" / "labels_val.npy", np.zeros(4, int))
    assert from_npy_main([str(tmp_path / "d"), "--encoder", "enc", "--out", str(tmp_path / "x")]) == 1
    assert "4 labels for 5 embeddings; they do not match" in caplog.text


def test_from_npy_refuses_non_finite_rows_naming_the_file(tmp_path, caplog):
    x = np.ones((2500, 3), np.float32)
    x[[7, 2100, 2101], 1] = [np.nan, np.inf, -np.inf]
    np.save(tmp_path / "embeddings_enc_val.npy", x)
    np.save(tmp_path / "labels_val.npy", np.zeros(2500, int))
    assert from_npy_main([str(tmp_path), "--encoder", "enc", "--out", str(tmp_path / "x.zarr")]) == 1
    assert "embeddings_enc_val.npy: 3 of 2500 rows are not finite (NaN, Inf)" in caplog.text
    assert "first at row 7; nothing was imported" in caplog.text
    assert store.open_group(tmp_path / "x.zarr", "enc", "val") is None


def test_from_npy_into_an_existing_group_is_refused_unless_overwrite(tmp_path, caplog):
    for n in (16, 5):
        (tmp_path / str(n)).mkdir()
        np.save(tmp_path / str(n) / "embeddings_enc_val.npy", np.full((n, 3), n, np.float32))
        np.save(tmp_path / str(n) / "labels_val.npy", np.zeros(n, int))
    out = tmp_path / "s.zarr"
    assert from_npy_main([str(tmp_path / "16"), "--encoder", "enc", "--out", str(out)]) == 0
    store.open_group(out, "enc", "val", mode="a").attrs.update({"stale": 1})
    assert from_npy_main([str(tmp_path / "5"), "--encoder", "enc", "--out", str(out)]) == 1
    assert "enc/val already exists, made from other files" in caplog.text
    assert "pass --overwrite" in caplog.text
    assert store.open_embeddings(out, "enc", "val").shape == (16, 3)
    assert from_npy_main([str(tmp_path / "5"), "--encoder", "enc", "--out", str(out), "--overwrite"]) == 0
    e = store.open_embeddings(out, "enc", "val")
    assert e.shape == (5, 3) and (np.asarray(e.embeddings[:]) == 5).all() and "stale" not in e.attrs


def test_info_says_what_it_read(tmp_path, capsys):
    _group(tmp_path)
    assert info_main([str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert "enc/val: 10 x 4 float32" in out and "python -m embed.verify reads every chunk back" in out
    assert "0/3 shards marked done, INCOMPLETE" in describe(tmp_path / "s.zarr")[0]
    assert info_main([str(tmp_path / "none")]) == 1


@pytest.mark.parametrize("encoder, split", [("../x", "val"), ("vits16_800ep", "../../val"), (".locks", "a")])
def test_group_names_must_be_plain(tmp_path, encoder, split):
    from msnpipe.runtime import UserError

    layout = store.Layout(4, 2, 4, 1)
    for call in (lambda: store.open_group(tmp_path, encoder, split),
                 lambda: store.writer_lock(tmp_path, encoder, split),
                 lambda: store.create_group(tmp_path, encoder, split, layout=layout, attrs={})):
        with pytest.raises(UserError, match="not a plain name"):
            call()
    assert not any(tmp_path.iterdir())


def test_from_npy_refuses_an_encoder_name_that_is_not_plain(tmp_path, caplog):
    from embed.from_npy import main as from_npy_main

    np.save(tmp_path / "embeddings_x_train.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "labels_train.npy", np.arange(4))
    assert from_npy_main([str(tmp_path), "--encoder", "../x", "--out", str(tmp_path / "s.zarr")]) == 1
    assert "not a plain name" in caplog.text and not (tmp_path / "s.zarr").exists()
