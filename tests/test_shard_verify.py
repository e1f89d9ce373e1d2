"""python -m shard.verify: a good split passes; every kind of damage is named."""

import shutil
import tarfile

import pytest

from shard.__main__ import main as shard_main
from shard.reader import open_split
from shard.verify import main, verify_split
from tests.conftest import jpeg_bytes, lenient_jpeg, make_folder, replace_jpeg


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


def test_good_split_passes_with_decode(good, caplog):
    assert verify_split(open_split(good, "train"), ["libjpeg-turbo", "dali-cpu", "nvimgcodec-cpu"]) == []
    assert main([str(good), "--decode", "--workers", "2"]) == 0
    assert "train: ok, every JPEG decoded by libjpeg-turbo, dali-cpu, nvimgcodec-cpu" in caplog.text


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


def test_wrong_label_in_samples_tsv(damaged, caplog):
    tsv = damaged / "train" / "samples.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] = lines[1].replace("\t0\t", "\t2\t")
    tsv.write_text("\n".join(lines) + "\n")
    assert main([str(damaged)]) == 1
    assert "samples.tsv: changed after the split was made" in caplog.text


def test_unfinished_split_is_named(damaged, caplog):
    (damaged / "train" / "manifest.json").unlink()
    assert main([str(damaged), "--splits", "train"]) == 1
    assert "not found (it is unfinished: rerun python -m shard)" in caplog.text


def test_decode_names_every_sample_a_decoder_refuses(damaged, caplog):
    """A lenient JPEG in a self-consistent split (as older versions kept them): DALI and
    nvImageCodec refuse it, libjpeg decodes it; each refusal is one line naming shard, key and
    source path, and the decoder's own message."""
    replace_jpeg(damaged / "train", 6, lenient_jpeg(seed=6))
    assert main([str(damaged), "--decode", "--workers", "2"]) == 1
    lines = [r.message for r in caplog.records if "sample 00000006" in r.message]
    assert sorted(line.split(": ")[2] for line in lines) == ["dali-cpu", "nvimgcodec-cpu"]
    assert all(line.startswith("train-000001.tar: sample 00000006 (b/img_002.JPEG): ") and
               "Invalid marker" in line for line in lines)


def test_a_decoder_that_crashes_names_the_sample(damaged):
    replace_jpeg(damaged / "train", 3, jpeg_bytes(seed=3) + b"CRASH")
    problems = verify_split(open_split(damaged, "train"), ["tests.decoder_stubs:crash_on_marked"], workers=2)
    stub = "tests.decoder_stubs:crash_on_marked"
    assert problems == [f"train-000000.tar: sample 00000003 (a/img_003.JPEG): {stub}: {stub} crashed the "
                        "process decoding it"]


def test_without_dali_verify_reads_and_decodes_with_what_is_there(good, monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("nvidia") else real(name, *a))
    assert main([str(good), "--decode", "--workers", "1"]) == 0
    assert "decoding with libjpeg-turbo; not dali-cpu: nvidia.dali is not installed" in caplog.text
    assert "every JPEG decoded by libjpeg-turbo" in caplog.text


def test_decoders_that_cannot_run_here_are_refused_in_one_line(good, caplog):
    assert main([str(good), "--decoders", "dali-mixed"]) == 1
    assert "--decoders dali-mixed: cannot run here (no GPU here)" in caplog.text
    assert main([str(good), "--decoders", "pillow"]) == 1
    assert "--decoders 'pillow': one of libjpeg-turbo" in caplog.text
