"""Multi-label transfer end to end: list file -> shards -> store -> one-vs-rest mAP."""

import numpy as np
import pytest

from shard.__main__ import main as shard_main
from shard.reader import open_split
from shard.scan import ScanError, read_label_list
from shard.verify import main as verify_main
from tests.conftest import jpeg_bytes, write


def test_list_file_parsing(tmp_path):
    text = b"# VOC-style\na/1.jpg\tdog,person\n\nb/2.jpg\tcat\nc/3.jpg\tperson,dog,dog\n"
    f = write(tmp_path / "l.tsv", text)
    classes, cands = read_label_list(f)
    assert classes == ["cat", "dog", "person"]
    assert [(c.path, c.label) for c in cands] == [("a/1.jpg", "1,2"), ("b/2.jpg", "0"), ("c/3.jpg", "1,2")]
    for bad, what in ((b"a.jpg dog\n", "expected 'path<TAB>label"), (b"a.jpg\t\n", "expected"),
                      (b"../x.jpg\tdog\n", "must be relative"), (b"# nothing\n", "no samples")):
        with pytest.raises(ScanError, match=what):
            read_label_list(write(tmp_path / "bad.tsv", bad))


def _voc_shards(tmp_path):
    """Six listed images (one absent) sharded with --labels; returns the OUT folder."""
    src = tmp_path / "voc"
    for i in range(6):
        write(src / "JPEGImages" / f"{i:06d}.jpg", jpeg_bytes(seed=i))
    lines = [f"JPEGImages/{i:06d}.jpg\t{lab}" for i, lab in
             enumerate(["dog", "dog,person", "cat", "person", "cat,dog", "missing"])]
    lines[5] = "JPEGImages/nope.jpg\tcat"  # listed but absent: skipped with a reason
    write(tmp_path / "trainval.tsv", ("\n".join(lines) + "\n").encode())
    assert shard_main([str(src), str(tmp_path / "out"), "--split", "trainval", "--labels",
                       str(tmp_path / "trainval.tsv"), "--samples-per-shard", "2", "--workers", "1"]) == 0
    return tmp_path / "out"


def test_shard_verify_and_reader(tmp_path):
    out = _voc_shards(tmp_path)
    split = open_split(out, "trainval")
    assert split.multilabel and split.classes == ["cat", "dog", "person"] and split.num_samples == 5
    assert split.label_texts() == ["1", "1,2", "0", "2", "0,1"]
    np.testing.assert_array_equal(split.labels(), [[0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 0]])
    assert [s["path"] for s in split.skipped] == ["JPEGImages/nope.jpg"]
    assert verify_main([str(out)]) == 0


def test_embed_stores_multi_hot_labels(tmp_path, tiny_encoders):
    from embed.run import Config, run
    from embed.store import open_embeddings
    shards = _voc_shards(tmp_path)
    run(Config(shards=shards, split="trainval", encoders=("tiny_a",), weights="random",
               out=tmp_path / "s.zarr", batch_size=2, threads=1))
    e = open_embeddings(tmp_path / "s.zarr", "tiny_a", "trainval")
    assert e.labels.dtype == np.int8 and e.labels.shape == (5, 3) and e.shape == (5, 32)
    np.testing.assert_array_equal(e.labels, open_split(shards, "trainval").labels())


def test_labels_needs_split(tmp_path):
    write(tmp_path / "l.tsv", b"a.jpg\tdog\n")
    with pytest.raises(SystemExit):
        shard_main([str(tmp_path), str(tmp_path / "o"), "--labels", str(tmp_path / "l.tsv")])


def test_voc07_average_precision_by_hand():
    from probe.multilabel import voc07_average_precision
    y = np.array([1, 1, 0, 0])
    assert voc07_average_precision(np.array([4.0, 3, 2, 1]), y) == 1.0
    # ranks: pos, neg, pos -> precision at recall .5 is 1, at recall 1 is 2/3
    v = voc07_average_precision(np.array([3.0, 2, 1, 0]), np.array([1, 0, 1, 0]))
    assert v == pytest.approx((6 * 1.0 + 5 * (2 / 3)) / 11)


def _multilabel_store(root, informative: bool):
    from embed.from_npy import main as from_npy_main
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 8))  # how each class shows in the features, shared by both splits
    for split, n in (("train", 300), ("val", 200)):
        y = (rng.random((n, 4)) < 0.3).astype(np.int8)
        x = rng.normal(size=(n, 8)) + (3 * y @ w if informative else 0)
        np.save(root / f"embeddings_m_{split}.npy", x.astype(np.float32))
        np.save(root / f"labels_{split}.npy", y)
    assert from_npy_main([str(root), "--encoder", "m", "--out", str(root / "s.zarr")]) == 0
    return root / "s.zarr"


@pytest.mark.parametrize("informative", [True, False])
def test_probe_multilabel(tmp_path, informative):
    from probe.__main__ import main as probe_main
    store = _multilabel_store(tmp_path, informative)
    assert probe_main([str(store), "--encoder", "m", "--multilabel", "--C", "0.1,1", "--backend",
                       "sklearn", "--out", str(tmp_path / "o")]) == 0
    import csv
    rows = list(csv.DictReader(open(tmp_path / "o" / "multilabel.csv")))
    assert [r["C"] for r in rows] == ["0.1", "1.0"] and rows[0]["classes"] == "4"
    best = max(float(r["mAP"]) for r in rows)
    assert best > 0.85 if informative else abs(best - 0.3) < 0.1  # chance = prevalence


def test_single_label_probe_refuses_multi_hot(tmp_path, caplog):
    from probe.__main__ import main as probe_main
    store = _multilabel_store(tmp_path, True)
    assert probe_main([str(store), "--encoder", "m", "--out", str(tmp_path / "o")]) == 1
    assert "has multi-hot labels: use --multilabel" in caplog.text
