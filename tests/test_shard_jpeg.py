"""shard.jpeg: the structural check against PIL's full decode and every decoder of the embed
stage, on a corpus of damaged files and of libjpeg's edge cases.

What the fast path keeps, PIL's full decode keeps and every decoder installed here decodes
(libjpeg-turbo through torchvision, DALI's and nvImageCodec's CPU decoders), and every intact
JPEG is kept by the fast path alone. A file the fast path does not vouch for is decoded in full
(and re-encoded when only a lenient decoder reads it), so the corpus makes sure the fast path
vouches only where every decoder agrees. The edge cases follow libjpeg's own checks and
warnings: complete and over-full Huffman tables, every marker class at every header position,
bytes between segments, zero, short and over-long segment lengths, components without a DC
scan, restart markers out of order, missing or unexpected, progression errors.
"""

import io
import re
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from msnpipe.decoders import Sample, failures, usable
from shard.jpeg import huffman_problem, inspect, sound_jpeg

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


def pil_keeps(data: bytes) -> bool:
    """The oracle: PIL's full decode reads it as an RGB or grayscale JPEG."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L")
    except Exception:
        return False


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


# -- libjpeg's edge cases: segments taken apart and put together again ---------------------------


def split(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(the header segments before the first SOS as (marker, payload), the rest from that SOS on)."""
    pos, segs = 2, []
    while data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segs.append((data[pos + 1], data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return segs, data[pos:]


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def join(segs: list[tuple[int, bytes]], rest: bytes, *, extra: bytes = b"", at: int = -1) -> bytes:
    """SOI, the segments with `extra` inserted before segment `at` (len(segs): before the SOS), rest."""
    parts = [b"\xff\xd8"] + [(extra if i == at else b"") + segment(m, p) for i, (m, p) in enumerate(segs)]
    return b"".join(parts) + (extra if at == len(segs) else b"") + rest


def _insertions(segs: list[tuple[int, bytes]]) -> dict[str, bytes]:
    """A sample of every marker class (standalone or with a payload), junk, fill and bad lengths."""
    sof = next(p for m, p in segs if m in (0xC0, 0xC2))
    dht, dqt = next(p for m, p in segs if m == 0xC4), next(p for m, p in segs if m == 0xDB)
    return {
        "TEM": b"\xff\x01", "RST0": b"\xff\xd0", "RST5": b"\xff\xd5", "SOI": b"\xff\xd8", "EOI": b"\xff\xd9",
        "FF00": b"\xff\x00", "fill": b"\xff\xff", "fill2": b"\xff\xff\xff", "junk1": b"\x00",
        "junk2": b"\x12\x34", "res02": segment(0x02, b"ab"), "resBF": segment(0xBF, b"ab"),
        "SOF0-again": segment(0xC0, sof), "SOF1": segment(0xC1, sof), "SOF3": segment(0xC3, sof),
        "SOF9": segment(0xC9, sof), "DHT-again": segment(0xC4, dht), "DQT-again": segment(0xDB, dqt),
        "JPG": segment(0xC8, b"ab"), "DAC": segment(0xCC, b"\x00\x11"), "DNL": segment(0xDC, b"\x00\x38"),
        "DRI0": segment(0xDD, b"\x00\x00"), "DRI5": segment(0xDD, b"\x00\x05"), "DHP": segment(0xDE, sof),
        "EXP": segment(0xDF, b"\x11"), "APP0": segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
        "APP14": segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01"), "APP15": segment(0xEF, b"xy"),
        "JPG0": segment(0xF0, b"ab"), "JPG13": segment(0xFD, b"ab"), "COM": segment(0xFE, b"hello"),
        "COM-empty": segment(0xFE, b""), "COM-length0": b"\xff\xfe\x00\x00",
        "COM-length1": b"\xff\xfe\x00\x01",
    }


def _huffman_edits(segs: list[tuple[int, bytes]], rest: bytes) -> dict[str, bytes]:
    """The first DHT's first (DC) table replaced by complete, over-full and too-large codes."""
    dht = next(p for m, p in segs if m == 0xC4)
    out = {}
    for name, counts in (("complete1", [2] + [0] * 15), ("complete2", [0, 4] + [0] * 14),
                         ("overfull2", [0, 5] + [0] * 14), ("too-many", [0] * 7 + [255, 2] + [0] * 7)):
        n = sum(counts)
        table = bytes([0x00]) + bytes(counts) + bytes(range(min(n, 12))) + bytes(max(0, n - 12))
        out[f"huffman-{name}"] = join([(m, table if (m, p) == (0xC4, dht) else p) for m, p in segs], rest)
    return out


def _restart_edits(data: bytes) -> dict[str, bytes]:
    """Restart markers swapped, skipped, missing, repeated, or present without a DRI."""
    rst = [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", data)]
    swapped, skipped = bytearray(data), bytearray(data)
    swapped[rst[1] + 1], swapped[rst[2] + 1] = swapped[rst[2] + 1], swapped[rst[1] + 1]
    skipped[rst[1] + 1] = 0xD0 + (skipped[rst[1] + 1] - 0xD0 + 3) % 8
    segs, rest = split(data)
    return {"rst-swapped": bytes(swapped), "rst-skipped": bytes(skipped),
            "rst-missing": data[: rst[1]] + data[rst[1] + 2 :],
            "rst-repeated": data[: rst[1]] + data[rst[1] : rst[1] + 2] + data[rst[1] :],
            "rst-without-dri": join([(m, p) for m, p in segs if m != 0xDD], rest)}


def _scans(data: bytes) -> list[int]:
    return [m.start() for m in re.finditer(rb"\xff\xda", data)]


def _progression_edits(data: bytes) -> dict[str, bytes]:
    """A progressive file with each scan removed in turn, and with component 3 left out of its
    first DC scan (so its only DC scan is a refinement)."""
    sos, eoi = _scans(data), data.rindex(b"\xff\xd9")
    out = {f"scan{i}-removed": data[:p] + data[(sos[i + 1] if i + 1 < len(sos) else eoi) :]
           for i, p in enumerate(sos)}
    p, n = sos[0], data[sos[0] + 4]
    comps, tail = data[p + 5 : p + 5 + 2 * n], data[p + 5 + 2 * n : p + 8 + 2 * n]
    header = b"\xff\xda" + struct.pack(">H", 6 + 2 * (n - 1)) + bytes([n - 1]) + comps[:-2] + tail
    out["dc-scan-without-component-3"] = data[:p] + header + data[p + 2 + 6 + 2 * n :]
    return out


def edges() -> dict[str, bytes]:
    """libjpeg's edge cases, from a baseline, a progressive and a restart-marker JPEG."""
    base, prog = _jpeg(_image(0), quality=85), _jpeg(_image(1), quality=85, progressive=True)
    out = {}
    for kind, data in (("base", base), ("prog", prog)):
        segs, rest = split(data)
        for name, extra in _insertions(segs).items():
            for at in range(len(segs) + 1):
                out[f"{kind}-{name}-at{at}"] = join(segs, rest, extra=extra, at=at)
        out |= {f"{kind}-{k}": v for k, v in _huffman_edits(segs, rest).items()}
        restarts = _jpeg(_image(2, gray=kind == "prog"), quality=90, restart_marker_blocks=2,
                         progressive=kind == "prog")
        out |= {f"{kind}-{k}": v for k, v in _restart_edits(restarts).items()}
    progressive = _jpeg(_image(3), quality=90, progressive=True)
    out |= {f"prog-{k}": v for k, v in _progression_edits(progressive).items()}
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
def corpus() -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, whether PIL's full decode keeps it)."""
    good = intact()
    files = {**good, **damaged(good), **edges(), **others()}
    return {name: (data, pil_keeps(data)) for name, data in files.items()}


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on the EXIF it is fed


def test_the_corpus_is_large_and_varied(corpus):
    kept = [k for _, k in corpus.values()]
    assert len(corpus) > 3500
    assert kept.count(True) > 1000 and kept.count(False) > 1000


def test_what_the_fast_path_keeps_pil_keeps(corpus):
    wrong = [name for name, (data, pil) in corpus.items()
             if sound_jpeg(data, max_pixels=MAX_PIXELS) and not pil]
    assert wrong == []


def test_what_the_fast_path_keeps_every_decoder_decodes(corpus, tmp_path):
    kept = [name for name, (data, _) in corpus.items() if sound_jpeg(data, max_pixels=MAX_PIXELS)]
    blob = tmp_path / "kept.bin"  # every kept file, end to end in one file
    samples, offset = [], 0
    with open(blob, "wb") as f:
        for name in kept:
            f.write(corpus[name][0])
            samples.append(Sample(name, str(blob), offset, len(corpus[name][0])))
            offset += len(corpus[name][0])
    groups = [samples[i : i + 256] for i in range(0, len(samples), 256)]
    names, _ = usable()
    assert "libjpeg-turbo" in names
    for decoder in names:
        bad = [(s.key, why) for _, found in failures(decoder, groups, workers=2) for s, why in found]
        assert bad == [], decoder


def test_every_intact_jpeg_passes_on_the_structural_check_alone():
    for name, data in intact().items():
        assert inspect(data) == ((72, 56), None), name


def test_it_keeps_most_of_what_pil_keeps(corpus):
    """Early EOI and trailing bytes are kept as PIL keeps them (but a restart-marker file whose
    scan ends early lacks markers: that is refused), and so are entropy flips unless the flip made
    a marker; header flips that PIL shrugs off are decoded in full, so they keep PIL's verdict."""
    names = damaged(intact()).keys()
    kept_by_pil = [name for name in names if corpus[name][1]]
    fast = {n for n in kept_by_pil if sound_jpeg(corpus[n][0], max_pixels=MAX_PIXELS) is not None}
    assert len(fast) / len(kept_by_pil) > 0.8
    for kind in ("early-eoi", "trailing"):
        named = [n for n in kept_by_pil if kind in n and not (kind == "early-eoi" and "restart" in n)]
        assert named and all(n in fast for n in named), kind
    flips = [n for n in kept_by_pil if "entropy-flip" in n and "restart" not in n]
    assert sum(n in fast for n in flips) / len(flips) > 0.9


@pytest.mark.parametrize("counts, problem", [
    ([0, 3] + [0] * 14, None),  # three 2-bit codes: 00, 01, 10; 11 is left, as libjpeg wants
    ([0, 4] + [0] * 14, "complete Huffman code at length 2"),  # 11 used: an all-ones code
    ([2] + [0] * 15, "complete Huffman code at length 1"),
    ([0, 5] + [0] * 14, "over-full"),
    ([0, 0, 7, 1] + [0] * 12, None),  # 000-110, then 1110: the all-ones 1111 left
    ([0, 0, 7, 2] + [0] * 12, "complete Huffman code at length 4"),
    ([0] * 7 + [255, 2] + [0] * 7, "257 codes"),
])
def test_huffman_tables_as_libjpeg_checks_them(counts, problem):
    got = huffman_problem(bytes(counts), bytes(min(sum(counts), 256)), dc=False)
    assert got is None if problem is None else problem in got


def test_a_dc_symbol_above_15_is_refused():
    counts = bytes([0, 2] + [0] * 14)
    assert huffman_problem(counts, bytes([3, 16]), dc=True) == "a DC Huffman symbol above 15"
    assert huffman_problem(counts, bytes([3, 16]), dc=False) is None


@pytest.mark.parametrize("name, reason", [
    ("base-huffman-complete2", "complete Huffman code at length 2 (DC table 0)"),
    ("base-huffman-overfull2", "over-full or complete Huffman code at length 2"),
    ("base-junk1-at3", "bytes between segments"),
    ("base-FF00-at3", "a stuffed FF00"),
    ("base-RST5-at3", "RST5 (0xD5)"),
    ("base-COM-length0-at3", "a segment length of 0"),
    ("base-COM-length1-at2", "a segment length of 1"),
    ("base-DNL-at3", "DNL"),
    ("base-SOF3-at1", "lossless coding (SOF3)"),
    ("base-SOF9-at1", "arithmetic coding (SOF9)"),
    ("base-SOF0-again-at6", "a second frame header"),
    ("base-EOI-at5", "no DC scan for component 1, 2, 3"),
    ("base-DRI5-at4", "0 restart markers in a scan that needs 3"),
    ("base-rst-swapped", "restart markers out of order"),
    ("base-rst-skipped", "restart markers out of order"),
    ("base-rst-missing", "restart markers out of order"),
    ("base-rst-repeated", "restart markers out of order"),
    ("base-rst-without-dri", "beyond the restart interval's markers"),
    ("prog-rst-swapped", "restart markers out of order"),
    ("prog-dc-scan-without-component-3", "an AC scan of component 3 before its DC scan"),
    ("prog-scan2-removed", "an inconsistent progression for component 3"),
    ("prog-scan4-removed", "an inconsistent progression for component 1"),
])
def test_each_edge_case_is_refused_naming_what_is_unusual(corpus, name, reason):
    size, problem = inspect(corpus[name][0])
    assert size is None and reason in problem


def test_harmless_variants_pass(corpus):
    """Segments a usual file may hold anywhere in its header, fill bytes before a marker, a
    restart interval of 0, and a progressive file without its last refinement scans."""
    for name in ("APP0", "APP14", "APP15", "COM", "COM-empty", "DHT-again", "DQT-again", "DRI0", "fill",
                 "fill2"):
        for kind in ("base", "prog"):
            for at in range(2, 6):
                assert inspect(corpus[f"{kind}-{name}-at{at}"][0])[0] is not None, (kind, name, at)
    assert inspect(corpus["prog-scan9-removed"][0])[0] is not None


def _scan_bytes(data: bytes, sos: int) -> slice:
    """The scan at `sos`: its header and entropy data, to the next marker (tables for the next
    scan may follow it)."""
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return slice(sos, re.compile(rb"\xff[^\x00\xd0-\xd7\xff]").search(data, start).start())


def _without_scan_of(data: bytes, component: int) -> bytes:
    """A sequential file of one scan per component, less the scan of `component`."""
    scan = _scan_bytes(data, next(p for p in _scans(data) if data[p + 5] == component))
    return data[: scan.start] + data[scan.stop :]


def test_every_component_needs_its_dc_scan():
    """A sequential file of one scan per component passes; without the scan of any one component
    it is refused, and so is a component scanned twice. (tests/data/sequential-three-scans.jpg is
    `_jpeg(_image(0), quality=85)` rewritten by libjpeg-turbo's `jpegtran -scans` with the scan
    script `0; 1; 2;`, a lossless transcode.)"""
    from pathlib import Path

    data = (Path(__file__).parent / "data/sequential-three-scans.jpg").read_bytes()
    assert inspect(data) == ((72, 56), None) and len(_scans(data)) == 3 and pil_keeps(data)
    ids = [data[p + 5] for p in _scans(data)]
    for c in ids:
        assert inspect(_without_scan_of(data, c)) == (None, f"no DC scan for component {c}")
    second = _scan_bytes(data, _scans(data)[1])
    twice = data[: second.stop] + data[second] + data[second.stop :]
    assert inspect(twice)[1] == f"component {ids[1]} in two scans of a sequential file"


def test_sizes_above_the_limits_go_to_the_full_decode():
    data = intact()["0-base-rgb"]
    assert sound_jpeg(data, max_pixels=72 * 56 - 1) is None  # a decompression bomb's size
    assert sound_jpeg(data, max_pixels=MAX_PIXELS, max_side=64) is None  # to be shrunk
    assert sound_jpeg(data, max_pixels=MAX_PIXELS, max_side=72) == (72, 56)
