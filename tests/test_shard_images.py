"""shard.images: the verdict for every kind of input, and the bytes that go in the shard."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shard.images import KEEP, REPAIR, RETRY, SKIP, Verdict, check_image, jpeg_payload
from tests.conftest import image_bytes, jpeg_bytes, make_zoo, write


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, make_zoo(root)


def test_every_kind_gets_its_fate(zoo):
    root, fates = zoo
    got = {rel: check_image(str(root / rel)).status for rel in fates}
    assert got == fates


def test_kept_jpeg_bytes_are_copied_unchanged_with_exif(zoo):
    root, _ = zoo
    path = root / "cat/rotated.exif.jpeg"
    verdict = check_image(str(path))
    out = jpeg_payload(str(path), verdict, quality=95, max_side=None)
    assert out == path.read_bytes()
    assert Image.open(io.BytesIO(out)).getexif()[0x0112] == 6


@pytest.mark.parametrize("rel", ["cat/rgba.png", "cat/palette.png", "cat/sixteen.png",
                                 "dog/a.webp", "dog/b.bmp", "dog/c.tif", "dog/gif inside.JPEG",
                                 "dog/cmyk.JPEG"])
def test_repaired_images_match_pil_convert_rgb(zoo, rel):
    root, _ = zoo
    path = root / rel
    verdict = check_image(str(path))
    assert verdict.status == REPAIR and "converted to RGB JPEG" in verdict.detail
    out = Image.open(io.BytesIO(jpeg_payload(str(path), verdict, quality=95, max_side=None)))
    assert out.format == "JPEG" and out.mode == "RGB"
    want = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    got = np.asarray(out, dtype=np.float32)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 3.0  # JPEG q95 4:4:4 round trip


@pytest.mark.parametrize("rel, reason", [
    ("dog/truncated.JPEG", "truncated or corrupt"),
    ("dog/empty.JPEG", "empty file"),
    ("dog/text.jpg", "not an image"),
    ("dog/dangling.JPEG", "unreadable"),
])
def test_skips_say_why(zoo, rel, reason):
    root, _ = zoo
    v = check_image(str(root / rel))
    assert v.status == SKIP and v.detail.startswith(reason)
    with pytest.raises(ValueError, match="skipped file has no payload"):
        jpeg_payload(str(root / rel), v, 95, max_side=None)


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    path = write(tmp_path / "big.JPEG", jpeg_bytes(200, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # warning above 5000, error above 10000
    assert check_image(str(path)).detail.startswith("decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15000)  # the warning alone also skips
    assert check_image(str(path)).detail.startswith("decompression bomb")


def test_max_side_resizes_keeping_aspect(tmp_path):
    path = write(tmp_path / "wide.JPEG", jpeg_bytes(200, 100))
    assert check_image(str(path), max_side=200).status == KEEP
    v = check_image(str(path), max_side=50)
    assert (v.status, v.detail) == (REPAIR, "resized 200x100 to 50x25")
    out = Image.open(io.BytesIO(jpeg_payload(str(path), v, quality=90, max_side=50)))
    assert out.size == (50, 25)
    png = write(tmp_path / "x.png", image_bytes("png-rgba", w=80, h=40))
    v = check_image(str(png), max_side=40)
    assert v.detail == "PNG RGBA converted to RGB JPEG; resized 80x40 to 40x20"


def test_read_regular_reads_whole_files_and_refuses_special_ones_without_blocking(tmp_path):
    import os

    from shard.images import SpecialFile, read_regular
    for size in (0, 1, 70_000, 3 << 20):  # empty, tiny, a usual JPEG, more than one read's worth
        data = np.random.default_rng(size).bytes(size)
        (tmp_path / f"f{size}").write_bytes(data)
        assert read_regular(str(tmp_path / f"f{size}")) == data
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would block without a writer
    with pytest.raises(SpecialFile, match="not a regular file: a FIFO"):
        read_regular(str(tmp_path / "pipe"))
    with pytest.raises(SpecialFile, match="a folder"):
        read_regular(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_regular(str(tmp_path / "missing"))
    assert check_image(str(tmp_path / "pipe")) == Verdict(SKIP, "not a regular file: a FIFO")


PUBLIC = Path(__file__).parent / "data" / "public-jpegs"


def _lenient(name: str) -> bytes:
    """A JPEG with `name`'s anomaly in its header, which libjpeg only warns about (DALI and
    nvImageCodec refuse it): bytes between two segments, a stray RST, a COM of length 0."""
    data = jpeg_bytes(96, 64, seed=5)
    at = data.index(b"\xff\xdb")  # before the first quantization table
    extra = {"junk": b"\x00\x12", "rst": b"\xff\xd3", "com-length-0": b"\xff\xfe\x00\x00"}[name]
    return data[:at] + extra + data[at:]


@pytest.mark.parametrize("name, reason", [("junk", "bytes between segments"), ("rst", "RST3 (0xD3)"),
                                          ("com-length-0", "a segment length of 0")])
def test_a_lenient_jpeg_is_repaired_with_the_reason_never_kept(tmp_path, name, reason):
    path = write(tmp_path / f"{name}.JPEG", _lenient(name))
    for how in ("fast", "full"):
        v = check_image(str(path), validate=how)
        assert v.status == REPAIR and v.detail.startswith("lenient JPEG: ") and reason in v.detail, how
    out = jpeg_payload(str(path), v, quality=95, max_side=None)
    assert out != path.read_bytes() and Image.open(io.BytesIO(out)).format == "JPEG"
    from shard.jpeg import inspect

    assert inspect(out)[0] == (96, 64)  # the repaired bytes pass the check every decoder passes
    want = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert np.abs(np.asarray(Image.open(io.BytesIO(out)), dtype=np.float32) - want).mean() < 3.0


@pytest.mark.parametrize("rel, verdict, words", [
    ("libjpeg-turbo/monkey12.jpg", SKIP, "unsupported JPEG (12-bit samples)"),
    ("jpeg-decoder/reftest_lossless_1_jpeg_lossless_sel1.jpg", SKIP,
     "unsupported JPEG (lossless coding (SOF3))"),
    ("libjpeg-turbo/testimgari.jpg", REPAIR, "lenient JPEG: arithmetic coding (SOF9)"),
    ("pillow/junk_jpeg_header.jpg", REPAIR, "lenient JPEG: bytes between segments"),
    ("pillow/jpeg_ff00_header.jpg", REPAIR, "lenient JPEG: a stuffed FF00"),
    ("jpeg-decoder/reftest_progressive-missing-dc.jpg", REPAIR,
     "an AC scan of component 1 before its DC scan"),
])
def test_unusual_public_jpegs_say_what_they_are(rel, verdict, words):
    v = check_image(str(PUBLIC / rel))
    assert v.status == verdict and words in v.detail


def test_read_errors_are_never_journaled_and_passing_ones_are_retried(tmp_path, monkeypatch):
    import errno

    import shard.images

    path = write(tmp_path / "a.JPEG", jpeg_bytes())
    real = shard.images.read_regular
    for code, status in ((errno.EIO, RETRY), (errno.ESTALE, RETRY), (errno.ENOMEM, RETRY),
                         (errno.EACCES, SKIP), (errno.ENOENT, SKIP)):
        def failing(p, code=code):
            raise OSError(code, os.strerror(code), p)

        monkeypatch.setattr(shard.images, "read_regular", failing)
        v = check_image(str(path))
        assert (v.status, v.journal) == (status, False) and v.detail.startswith("unreadable: "), code
    monkeypatch.setattr(shard.images, "read_regular", real)
    assert check_image(str(path)) == Verdict(KEEP)


def test_out_of_memory_while_decoding_is_retried_not_a_verdict(tmp_path, monkeypatch):
    import shard.images

    path = write(tmp_path / "x.png", image_bytes("png-rgba"))

    def no_memory(data):
        raise MemoryError

    monkeypatch.setattr(shard.images, "_decode", no_memory)
    v = check_image(str(path))
    assert (v.status, v.journal) == (RETRY, False)
