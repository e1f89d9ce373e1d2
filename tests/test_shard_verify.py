"""python -m shard.verify: a good split passes; every kind of damage is named."""

import shutil
import tarfile

import pytest

from shard.__main__ import main as shard_main
from shard.reader import open_split
from shard.verify import main, verify_split
from tests.conftest import make_folder


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("v")
    make_folder(root / "src" / "train", ["a", "b", "c"], per_class=4)
    assert shard_main([str(root / "src"), str(root / "out"), "--samples-per-shard", "5",
                       "--workers", "1"]) == 0
    return root / "out"


@pytest.fixture
def damaged(good, tmp_path):
    shutil.copytree(good, tmp_path / "out")
    return tmp_path / "out"


def test_good_split_passes_with_decode(good):
    assert verify_split(open_split(good, "train"), decode=True) == []
    assert main([str(good), "--decode"]) == 0


def test_tar_cut_between_two_members(damaged, caplog):
    tar_path = damaged / "train" / "train-000000.tar"
    with tarfile.open(tar_path) as tar:
        cut = [m for m in tar.getmembers()][4].offset  # start of the third sample's header
    with open(tar_path, "r+b") as f:
        f.truncate(cut)
    with tarfile.open(tar_path) as tar:  # tar readers accept it silently
        assert len(tar.getmembers()) == 4
    problems = verify_split(open_split(damaged, "train"))
    assert any("bytes, the manifest says" in p for p in problems)
    assert any("2 samples, expected 5" in p for p in problems)
    assert main([str(damaged)]) == 1
    assert "train-000000.tar" in caplog.text


def test_one_changed_byte(damaged):
    tar_path = damaged / "train" / "train-000001.tar"
    data = bytearray(tar_path.read_bytes())
    data[2000] ^= 0xFF
    tar_path.write_bytes(bytes(data))
    problems = verify_split(open_split(damaged, "train"))
    assert len(problems) == 1 and problems[0].startswith(f"{tar_path}: sha256 ")


def test_index_that_does_not_match_its_tar(damaged):
    idx = damaged / "train" / "train-000002.idx"
    idx.write_text(idx.read_text().replace("jpg 512 ", "jpg 1024 ", 1))
    problems = verify_split(open_split(damaged, "train"))
    assert problems == [f"{idx}: missing or does not match the offsets in train-000002.tar"]


def test_wrong_label_in_samples_tsv(damaged):
    tsv = damaged / "train" / "samples.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] = lines[1].replace("\t0\t", "\t2\t")
    tsv.write_text("\n".join(lines) + "\n")
    problems = verify_split(open_split(damaged, "train"))
    assert problems and "00000000.cls" in problems[0]


def test_unfinished_split_is_named(damaged, caplog):
    (damaged / "train" / "manifest.json").unlink()
    assert main([str(damaged), "--splits", "train"]) == 1
    assert "not found (it is unfinished: rerun python -m shard)" in caplog.text
