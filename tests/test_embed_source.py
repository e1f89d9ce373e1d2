"""embed.source and the faults it guards against: shards changed after sharding, and samples a
decoder cannot read. Each case once gave a raw traceback, a segfault or rows from other bytes."""

import shutil

import pytest

from embed import store
from embed.__main__ import main
from shard.reader import open_split
from tests.conftest import lenient_jpeg, replace_jpeg


def _args(shards, out, *extra):
    return [str(shards), "--split", "val", "--encoder", "tiny_a", "--weights", "random", "--out", str(out),
            "--batch-size", "4", "--threads", "2", *extra]


@pytest.fixture
def shards(embed_shards, tmp_path):
    """A copy of the 17-sample, 5-shard split that a test may damage."""
    return shutil.copytree(embed_shards, tmp_path / "shards")


def test_a_tar_cut_short_is_refused_before_anything_is_made(shards, tiny_encoders, tmp_path, caplog):
    tar = shards / "val" / "val-000003.tar"
    tar.write_bytes(tar.read_bytes()[:-3000])
    assert main(_args(shards, tmp_path / "s.zarr")) == 1
    assert f"{tar}: {tar.stat().st_size} bytes, the manifest says {tar.stat().st_size + 3000}" in caplog.text
    assert "shard.verify" in caplog.text and not (tmp_path / "s.zarr").exists()


def test_a_tar_replaced_by_another_shards_is_refused_by_its_first_header(shards, tiny_encoders, tmp_path,
                                                                         caplog):
    a, b = shards / "val" / "val-000001.tar", shards / "val" / "val-000002.tar"
    size = a.stat().st_size
    a.write_bytes((b.read_bytes() + bytes(size))[:size])  # another shard's tar, at this one's size
    assert main(_args(shards, tmp_path / "s.zarr")) == 1
    assert f"{a}: its first member is '00000008.jpg', not '00000004.jpg'" in caplog.text


@pytest.mark.parametrize("decoder", ["dali", "torchvision", "nvimgcodec"])
def test_changed_bytes_in_a_tar_are_refused_before_its_rows_are_written(shards, tiny_encoders, tmp_path,
                                                                       caplog, decoder):
    """One flipped bit inside a JPEG, at the same size: its rows would differ with exit 0. The
    shard's sha256 is checked before its rows are written; the shards before it stay done."""
    tar = shards / "val" / "val-000002.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0x10
    tar.write_bytes(bytes(data))
    out = tmp_path / "s.zarr"
    assert main(_args(shards, out, "--decoder", decoder)) == 1
    assert f"{tar}: sha256" in caplog.text and "the manifest says" in caplog.text
    done = store.done_shards(store.open_group(out, "tiny_a", "val"))
    assert done.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("decoder, data, said", [
    ("dali", lenient_jpeg(seed=9),
     "dali-cpu cannot decode it (nvImageCodec failure: '#3'; [jpeg_parser] Invalid marker)"),
    ("torchvision", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(600), "libjpeg-turbo cannot decode it ("),
    ("nvimgcodec", lenient_jpeg(seed=9), "nvimgcodec-cpu cannot decode it ([jpeg_parser] Invalid marker)"),
])
def test_a_sample_the_decoder_cannot_read_is_one_line_and_earlier_shards_stay_done(
        shards, tiny_encoders, tmp_path, caplog, decoder, data, said):
    replace_jpeg(shards / "val", 9, data)  # shard 2 of 5, as a split made by an older version
    out = tmp_path / "s.zarr"
    assert main(_args(shards, out, "--decoder", decoder)) == 1
    path = open_split(shards, "val").paths()[9]
    assert f"{shards}/val/val-000002.tar: sample 00000009 ({path}): {said}" in caplog.text
    assert "2 of 5 shards are done and stay done" in caplog.text and "shard.verify" in caplog.text
    assert "Traceback" not in caplog.text
    assert store.done_shards(store.open_group(out, "tiny_a", "val")).tolist()[:2] == [True, True]


def test_the_checks_read_little_and_hash_a_few_shards_ahead(embed_shards):
    from embed.source import AHEAD, CheckedShards

    split = open_split(embed_shards, "val")
    shards = CheckedShards(split)
    shards.start([3, 1, 4, 0, 2])
    assert sorted(shards.hashing) == [1, 3] and len(shards.hashing) == AHEAD
    for i in (3, 1, 4, 2, 0):  # in any order, each once
        shards.verified(i)
    shards.verified(3)
    assert shards.done == {0, 1, 2, 3, 4} and not shards.hashing and not shards.todo
    shards.close()
