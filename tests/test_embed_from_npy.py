"""python -m embed.from_npy: every value checked before anything is written, groups whole or not
at all, a rerun that goes on, a content identity; the cases of the integrity audit."""

import numpy as np
import pytest

from embed import store
from embed.from_npy import main
from embed.verify import main as verify_main


def _files(folder, n=2500, d=4, labels=None, rows=None, split="train", paths=False, value=1.0):
    folder.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = value + np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    np.save(folder / f"embeddings_e_{split}.npy", rows)
    np.save(folder / f"labels_{split}.npy", labels if labels is not None else np.arange(len(rows)) % 5)
    if paths:
        (folder / f"filepaths_{split}.txt").write_text("".join(f"c/{i}.jpg\n" for i in range(len(rows))))
    return folder


def _args(folder, out, *extra):
    return [str(folder), "--encoder", "e", "--out", str(out), *extra]


@pytest.mark.parametrize("labels, rows, said", [
    (np.full(10, 0.9), None, "labels must be whole numbers"),  # once truncated to 0 silently
    (np.full(10, 2**31), None, "class indices are 0 to 2147483647"),  # once wrapped through int32
    (np.array([-1] + [0] * 9), None, "labels from -1 to 0"),
    (None, (np.ones((10, 4)) + 1j).astype(np.complex64), "complex64"),  # once lost its imaginary part
    (None, np.full((10, 4), 1e300), "too large for float32 arithmetic"),  # float64 beyond float32
    (None, np.full((10, 4), 3e38, np.float32), "too large for float32 arithmetic"),
    (np.zeros((10, 3), np.int64) + 2, None, "multi-hot labels hold values from 2 to 2"),
])
def test_bad_values_are_refused_in_one_line_and_nothing_is_written(tmp_path, caplog, labels, rows, said):
    folder = _files(tmp_path / "npy", n=10, labels=labels, rows=rows)
    assert main(_args(folder, tmp_path / "s.zarr")) == 1
    assert said in caplog.text
    assert store.open_group(tmp_path / "s.zarr", "e", "train") is None
    _files(folder, n=10)  # fixed: the refused import left nothing in the way of a rerun
    assert main(_args(folder, tmp_path / "s.zarr")) == 0


def test_a_failed_overwrite_leaves_the_complete_group(tmp_path, monkeypatch):
    """The new group was once renamed in before its rows existed: a kill left it empty."""
    old, new = _files(tmp_path / "old", value=1.0), _files(tmp_path / "new", value=5.0)
    out = tmp_path / "s.zarr"
    assert main(_args(old, out)) == 0
    want = np.asarray(store.open_embeddings(out, "e", "train").embeddings[:])
    write = store.write_shard

    def dies_on_shard_2(group, shard, *a, **k):
        if shard == 2:
            raise OSError(28, "No space left on device")
        return write(group, shard, *a, **k)

    monkeypatch.setattr(store, "write_shard", dies_on_shard_2)
    assert main(_args(new, out, "--overwrite")) == 1
    e = store.open_embeddings(out, "e", "train")
    np.testing.assert_array_equal(np.asarray(e.embeddings[:]), want)
    monkeypatch.setattr(store, "write_shard", write)
    assert main(_args(new, out, "--overwrite")) == 0
    assert (np.asarray(store.open_embeddings(out, "e", "train").embeddings[:]) > 3).mean() > 0.9
    assert not list((out / ".tmp").iterdir())


def test_an_interrupted_import_is_rerun_as_it_was(tmp_path, monkeypatch, caplog):
    """No interrupted import could be rerun ('already exists; pass --overwrite'): a split already
    imported from the same files is skipped, the one cut short is made again."""
    folder = _files(_files(tmp_path / "npy", split="train"), split="val", n=1200)
    out = tmp_path / "s.zarr"
    write = store.write_shard

    def ctrl_c_in_val(group, shard, *a, **k):
        if "e--val--" in str(group.store_path) and shard == 1:  # the val group, being built under .tmp
            raise KeyboardInterrupt
        return write(group, shard, *a, **k)

    monkeypatch.setattr(store, "write_shard", ctrl_c_in_val)
    assert main(_args(folder, out)) == 130
    assert store.open_group(out, "e", "val") is None and store.open_group(out, "e", "train") is not None
    monkeypatch.setattr(store, "write_shard", write)
    caplog.clear()
    assert main(_args(folder, out)) == 0
    assert "e/train: 2500 x 4 rows, no paths" in caplog.text
    assert "already imported from these files" in caplog.text
    assert store.open_embeddings(out, "e", "val").shape == (1200, 4)


def test_other_files_of_the_same_name_are_refused_and_the_identity_names_them(tmp_path, caplog):
    """Imports once had no content identity: re-imported changed files let a probe resume mix rows."""
    folder = _files(tmp_path / "npy", split="train")
    _files(folder, split="val", n=500)
    out = tmp_path / "s.zarr"
    assert main(_args(folder, out)) == 0
    before = store.open_embeddings(out, "e", "train").attrs["identity"]["files"]
    assert sorted(before) == ["embeddings_e_train.npy", "labels_train.npy"]
    _files(folder, split="train", value=9.0)  # the same names, other rows
    assert main(_args(folder, out)) == 1 and "already exists, made from other files" in caplog.text
    assert main(_args(folder, out, "--overwrite")) == 0
    after = store.open_embeddings(out, "e", "train").attrs["identity"]["files"]
    assert after["embeddings_e_train.npy"] != before["embeddings_e_train.npy"]


def test_bare_npy_without_paths_is_a_valid_store(tmp_path, caplog):
    """Published embeddings often come as bare .npy: verify once failed the valid store."""
    from embed.export import main as export_main

    folder = _files(tmp_path / "npy")
    out = tmp_path / "s.zarr"
    assert main(_args(folder, out)) == 0
    assert verify_main([str(out)]) == 0
    e = store.open_embeddings(out, "e", "train")
    assert e.paths is None and "paths" not in e.group
    assert export_main([str(out), "--encoder", "e", "--split", "train", "--out", str(tmp_path / "x")]) == 0
    written = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert written == ["embeddings_e_train.npy", "labels_train.npy"]


def test_paths_with_empty_lines_read_back(tmp_path):
    """A shard whose paths are all empty strings (the fill value) is still written and verified."""
    folder = _files(tmp_path / "npy", n=2000)
    (folder / "filepaths_train.txt").write_text("\n" * 1000 + "".join(f"c/{i}.jpg\n" for i in range(1000)))
    assert main(_args(folder, tmp_path / "s.zarr")) == 0
    assert verify_main([str(tmp_path / "s.zarr")]) == 0
    assert store.open_embeddings(tmp_path / "s.zarr", "e", "train").paths[999:1001] == ["", "c/0.jpg"]


def test_bare_npy_without_filepaths_imports_into_a_store_verify_calls_sound(tmp_path, caplog):
    """Published embeddings often come as bare .npy: verify once failed such a store ("paths:
    marked done but never written"); a group without paths is valid and says so."""
    from embed.verify import main as verify_main

    folder = _files(tmp_path / "npy", split="train")
    out = tmp_path / "s.zarr"
    assert main(_args(folder, out)) == 0
    assert verify_main([str(out)]) == 0
    assert "e/train: ok" in caplog.text
    assert "no paths: imported without filepaths, which is valid" in caplog.text
    assert "never written" not in caplog.text
