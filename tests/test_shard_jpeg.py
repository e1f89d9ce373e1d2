"""shard.jpeg: the structural check against PIL's full decode, on a corpus of damaged files.

For every file, what the fast path keeps the full decode (shard.images.check_image, as the
shard stage ran before) keeps too, and every intact JPEG is kept by the fast path alone. A file
the fast path does not vouch for is decoded in full, so its verdict is the full decode's by
construction; the corpus makes sure the fast path vouches only where the full decode agrees.
"""

import io

import numpy as np
import pytest
from PIL import Image

from shard.images import KEEP, check_image
from shard.jpeg import sound_jpeg

MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def _image(seed: int, w: int = 72, h: int = 56, gray: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8))
    img = small.resize((w, h), Image.Resampling.BICUBIC)
    return img.convert("L") if gray else img


def _jpeg(img: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **save)
    return out.getvalue()


def intact() -> dict[str, bytes]:
    """Intact JPEGs of every kind the corpus damages: baseline and progressive, gray and colour,
    three subsamplings, with and without EXIF, ICC profile and restart markers."""
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = b"\x00" * 128 + b"acsp" + b"\x00" * 300  # only carried, never parsed by the check
    out = {}
    for seed in range(3):
        for progressive in (False, True):
            for gray in (False, True):
                img = _image(seed, gray=gray)
                tag = f"{seed}-{'prog' if progressive else 'base'}-{'gray' if gray else 'rgb'}"
                out[tag] = _jpeg(img, quality=85, progressive=progressive)
                out[tag + "-exif-icc"] = _jpeg(img, quality=70, progressive=progressive,
                                               exif=exif.tobytes(), icc_profile=icc)
                out[tag + "-restart"] = _jpeg(img, quality=90, progressive=progressive,
                                              restart_marker_blocks=3)
                if not gray:
                    for sub in (0, 1, 2):
                        out[f"{tag}-sub{sub}"] = _jpeg(img, quality=80, progressive=progressive,
                                                       subsampling=sub)
    return out


def _scan_start(data: bytes) -> int:
    """Position of the first byte of entropy data (after the first SOS header)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def damaged(good: dict[str, bytes]) -> dict[str, bytes]:
    """Every cut class, header-byte flips, entropy flips, early EOI, trailing garbage."""
    rng = np.random.default_rng(0)
    out = {}
    for name, data in good.items():
        start = _scan_start(data)
        for frac in (0.05, 0.2, 0.33, 0.5, 0.66, 0.9, 0.99):
            out[f"{name}-cut{frac}"] = data[: int(len(data) * frac)]
        out[f"{name}-cut-before-eoi"] = data[:-2]
        out[f"{name}-cut-mid-eoi"] = data[:-1]
        out[f"{name}-cut-after-sos"] = data[:start]
        out[f"{name}-early-eoi-30"] = data[: start + (len(data) - start) // 3] + b"\xff\xd9"
        out[f"{name}-early-eoi-80"] = data[: start + 4 * (len(data) - start) // 5] + b"\xff\xd9"
        out[f"{name}-trailing"] = data + b"<html>garbage after the image</html>" * 3
        out[f"{name}-eoi-in-comment-cut"] = data[:2] + b"\xff\xfe\x00\x06ab\xff\xd9" + data[2:start // 2]
        for k in range(6):
            pos = int(rng.integers(start, len(data) - 2))
            flipped = bytearray(data)
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
            out[f"{name}-entropy-flip{k}"] = bytes(flipped)
    for name in ("0-base-rgb", "1-prog-rgb", "2-base-gray-restart", "0-prog-rgb-exif-icc", "1-base-rgb-sub1"):
        data = good[name]
        for pos in range(2, _scan_start(data)):
            for bit in (0x01, 0x40):
                flipped = bytearray(data)
                flipped[pos] ^= bit
                out[f"{name}-header-flip{pos}-{bit}"] = bytes(flipped)
    return out


def others() -> dict[str, bytes]:
    """Other formats and non-images with a .JPEG name, and JPEGs the fast path must leave alone."""
    img = _image(7)
    out = {}
    for fmt in ("PNG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out[fmt.lower()] = buf.getvalue()
    out["cmyk"] = _jpeg(img.convert("CMYK"), quality=90)
    out["text"] = b"this is not an image\n" * 20
    out["html"] = b"<!DOCTYPE html><html><body>404 Not Found</body></html>"
    out["random"] = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    out["empty"] = b""
    out["soi-only"] = b"\xff\xd8"
    out["header-only"] = _jpeg(img)[: _scan_start(_jpeg(img)) - 20]
    out["soi-eoi"] = b"\xff\xd8\xff\xd9"
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the full decode's verdict)."""
    root = tmp_path_factory.mktemp("jpeg")
    good = intact()
    files = {**good, **damaged(good), **others()}
    verdicts = {}
    for i, (name, data) in enumerate(files.items()):
        path = root / f"{i}.JPEG"
        path.write_bytes(data)
        verdicts[name] = (data, check_image(str(path)).status)
    return verdicts


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on the EXIF it is fed


def test_the_corpus_is_large_and_varied(corpus):
    statuses = [s for _, s in corpus.values()]
    assert len(corpus) > 3000
    assert statuses.count("keep") > 500 and statuses.count("skip") > 500 and "repair" in statuses


def test_what_the_fast_path_keeps_the_full_decode_keeps(corpus):
    wrong = [name for name, (data, status) in corpus.items()
             if sound_jpeg(data, max_pixels=MAX_PIXELS) is not None and status != KEEP]
    assert wrong == []


def test_every_intact_jpeg_passes_on_the_structural_check_alone():
    for name, data in intact().items():
        assert sound_jpeg(data, max_pixels=MAX_PIXELS) == (72, 56), name


def test_it_keeps_most_of_what_the_full_decode_keeps(corpus):
    """Early EOI and trailing bytes are kept as PIL keeps them, and so are entropy flips unless
    the flip made a marker (then the full decode decides); header flips that PIL shrugs off are
    decoded in full, so they keep PIL's verdict either way."""
    kept_by_pil = [name for name, (_, s) in corpus.items() if s == KEEP]
    fast = {n for n in kept_by_pil if sound_jpeg(corpus[n][0], max_pixels=MAX_PIXELS) is not None}
    assert len(fast) / len(kept_by_pil) > 0.85
    for kind in ("early-eoi", "trailing"):
        named = [n for n in kept_by_pil if kind in n]
        assert named and all(n in fast for n in named), kind
    flips = [n for n in kept_by_pil if "entropy-flip" in n]
    assert sum(n in fast for n in flips) / len(flips) > 0.9


def test_sizes_above_the_limits_go_to_the_full_decode():
    data = intact()["0-base-rgb"]
    assert sound_jpeg(data, max_pixels=72 * 56 - 1) is None  # a decompression bomb's size
    assert sound_jpeg(data, max_pixels=MAX_PIXELS, max_side=64) is None  # to be shrunk
    assert sound_jpeg(data, max_pixels=MAX_PIXELS, max_side=72) == (72, 56)
