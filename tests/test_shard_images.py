"""shard.images: the verdict for every kind of input, and the bytes that go in the shard."""

import io

import numpy as np
import pytest
from PIL import Image

from shard.images import KEEP, REPAIR, SKIP, Verdict, check_image, jpeg_payload
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
