"""shard.writer: deterministic tars, DALI indexes equal to DALI's own wds2idx, atomic files."""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shard.writer import index_of_tar, split_name, write_tar

dali = pytest.importorskip("nvidia.dali")  # wds2idx.py ships beside it in site-packages
WDS2IDX = Path(dali.__file__).parents[2] / "wds2idx.py"
SAMPLES = [("00000000", b"\xff\xd8jpeg-bytes-0", 3), ("00000001", b"x" * 1000, 12),
           ("00000002", b"y" * 511, 0)]


def test_split_name_follows_webdataset():
    assert split_name("00000001.jpg") == ("00000001", "jpg")
    assert split_name("dir.v2/abc.seg.png") == ("dir.v2/abc", "seg.png")


def test_tar_members_and_headers(tmp_path):
    rec = write_tar(tmp_path / "s-000000.tar", SAMPLES)
    assert (rec.num_samples, rec.tar, rec.idx) == (3, "s-000000.tar", "s-000000.idx")
    with tarfile.open(tmp_path / "s-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "00000000.jpg", "00000000.cls", "00000001.jpg", "00000001.cls",
            "00000002.jpg", "00000002.cls"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o444)}
        assert tar.extractfile("00000001.cls").read() == b"12"
        assert tar.extractfile("00000001.jpg").read() == b"x" * 1000
    assert not list(tmp_path.glob("*.tmp"))


def test_same_samples_same_bytes(tmp_path):
    a = write_tar(tmp_path / "a.tar", SAMPLES)
    b = write_tar(tmp_path / "b.tar", SAMPLES)
    assert a.sha256 == b.sha256 and a.bytes == b.bytes
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "b.idx").read_bytes()


@pytest.mark.skipif(not WDS2IDX.exists(), reason="DALI's wds2idx.py not installed")
def test_index_equals_dalis_wds2idx(tmp_path):
    write_tar(tmp_path / "s.tar", SAMPLES)
    subprocess.run([sys.executable, str(WDS2IDX), str(tmp_path / "s.tar"), str(tmp_path / "ref.idx")],
                   check=True, capture_output=True)
    assert (tmp_path / "s.idx").read_text() == (tmp_path / "ref.idx").read_text()
    assert index_of_tar(tmp_path / "s.tar") == (tmp_path / "ref.idx").read_text()


def test_the_tar_assembled_in_memory_is_the_one_tarfile_writes(tmp_path):
    import io

    from shard.writer import _tarinfo, tar_bytes
    rng = __import__("numpy").random.default_rng(0)
    files = [(f"{i:08d}.{ext}", rng.bytes(int(n))) for i, n in enumerate(rng.integers(0, 3000, 40))
             for ext in ("jpg", "cls")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    pieces, members = tar_bytes(files)
    assert b"".join(pieces) == buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert [(m.name, m.offset_data, m.size) for m in tar] == [(m.name, m.offset, m.size) for m in members]


@pytest.mark.parametrize("name, size", [
    ("00000001.jpg", 70_000), ("00000001.cls", 1), ("0" * 99 + "j", 0), ("k" * 100, 8**11 - 1),
    ("a" * 60 + "/" + "b" * 60, 5),  # tarfile splits it into prefix and name
    ("ü.jpg", 3),  # not ASCII
])
def test_each_header_is_the_one_tarfile_writes(name, size):
    from shard.writer import _tarinfo, ustar_header
    assert ustar_header(name, size) == _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING,
                                                                  "surrogateescape")
