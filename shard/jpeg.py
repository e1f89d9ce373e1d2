"""A structural JPEG check, at the speed of reading the bytes: is this a usual, whole JPEG?

    sound_jpeg(data, max_pixels=..., max_side=None) -> (width, height) or None

It walks the marker segments by their lengths and checks what libjpeg checks before it
decodes (a frame of 8-bit samples with 1 or 3 components, Huffman coding, sequential or
progressive; every quantization and Huffman table a scan uses defined and well formed;
component ids, sampling factors and scan parameters libjpeg accepts), then follows the entropy
data from marker to marker until EOI. It answers (width, height) only when all of that holds;
anything else (another format, CMYK, 12-bit, arithmetic or lossless coding, a header anomaly,
a missing EOI, a decompression bomb's size) gets None, and the caller decodes the file in
full as before. So it never turns away a file the full decode would keep; tests/
test_shard_jpeg.py checks, on a corpus of damaged files, that what it keeps the full decode
keeps too. Bytes inside the entropy data are not decoded: like libjpeg, which only warns
about them, it accepts flipped bits there, and an EOI that comes early.
"""

from __future__ import annotations

import functools
import re
import struct

SOI, EOI, SOS, DHT, DQT, DRI = 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD
HUFFMAN_FRAMES = {0xC0: False, 0xC1: False, 0xC2: True}  # SOF marker -> progressive
OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, arithmetic...
MAX_DIMENSION = 65500  # libjpeg's JPEG_MAX_DIMENSION
MAX_BLOCKS_IN_MCU = 10  # libjpeg's D_MAX_BLOCKS_IN_MCU
# a marker in entropy data: 0xFF then neither a stuffed 0x00, RSTn nor a fill byte (no `+` after
# \xff: the regex engine then finds candidates with its literal-prefix search, 20x faster)
NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class _Unusual(Exception):
    """Anything the structural check does not vouch for."""


class _Frame:
    def __init__(self, progressive: bool, width: int, height: int, *, comps: dict[int, tuple[int, int, int]]):
        self.progressive, self.width, self.height, self.comps = progressive, width, height, comps
        self.max_h = max(h for h, _, _ in comps.values())
        self.max_v = max(v for _, v, _ in comps.values())


def _check(ok: bool) -> None:
    if not ok:
        raise _Unusual


@functools.lru_cache(maxsize=256)
def _dqt(seg: bytes) -> tuple[int, ...]:
    """The ids of a DQT segment's tables, each checked. Files from one encoder and quality share
    their segments, so each distinct segment is checked once (here and in _dht)."""
    i, ids = 0, []
    while i < len(seg):
        pq, tq = seg[i] >> 4, seg[i] & 15
        _check(pq <= 1 and tq < 4)
        i += 1 + 64 * (pq + 1)
        _check(i <= len(seg))
        ids.append(tq)
    return tuple(ids)


def _huffman_ok(counts: bytes, values: bytes, dc: bool) -> bool:
    """libjpeg's checks of a table: at most 256 codes, every length's codes fitting in it, and DC
    symbols at most 15."""
    code = 0
    for length, n in enumerate(counts, 1):
        code += n
        if code > 1 << length:
            return False
        code <<= 1
    return sum(counts) <= 256 and (not dc or all(v <= 15 for v in values))


@functools.lru_cache(maxsize=256)
def _dht(seg: bytes) -> tuple[tuple[int, int], ...]:
    """The (class, id) of a DHT segment's tables, each checked as libjpeg checks it."""
    i, ids = 0, []
    while i < len(seg):
        _check(i + 17 <= len(seg))
        tc, th = seg[i] >> 4, seg[i] & 15
        counts = seg[i + 1 : i + 17]
        n = sum(counts)
        values = seg[i + 17 : i + 17 + n]
        _check(tc <= 1 and th < 4 and len(values) == n and _huffman_ok(counts, values, tc == 0))
        ids.append((tc, th))
        i += 17 + n
    return tuple(ids)


def _sof(marker: int, seg: bytes) -> _Frame:
    _check(len(seg) >= 6)
    precision, height, width, n = struct.unpack(">BHHB", seg[:6])
    _check(precision == 8 and 0 < height <= MAX_DIMENSION and 0 < width <= MAX_DIMENSION)
    _check(n in (1, 3) and len(seg) == 6 + 3 * n)
    comps = {}
    for j in range(n):
        cid, hv, tq = seg[6 + 3 * j : 9 + 3 * j]
        h, v = hv >> 4, hv & 15
        _check(cid not in comps and 1 <= h <= 4 and 1 <= v <= 4 and tq < 4)
        comps[cid] = (h, v, tq)
    frame = _Frame(HUFFMAN_FRAMES[marker], width, height, comps=comps)
    # libjpeg upsamples only by whole factors
    _check(all(frame.max_h % h == 0 and frame.max_v % v == 0 for h, v, _ in comps.values()))
    return frame


def _sos(seg: bytes, frame: _Frame | None, quant: set[int], *, huff: set[tuple[int, int]],
         seen: dict[int, bool]) -> None:
    """One scan header, checked as libjpeg checks it; `seen` records which components got DC."""
    _check(frame is not None and len(seg) >= 1)
    n = seg[0]
    _check(1 <= n <= 4 and len(seg) == 4 + 2 * n)
    ids = [seg[1 + 2 * j] for j in range(n)]
    _check(len(set(ids)) == n and all(c in frame.comps for c in ids))
    _check(all(frame.comps[c][2] in quant for c in ids))
    ss, se, ah_al = seg[1 + 2 * n], seg[2 + 2 * n], seg[3 + 2 * n]
    ah, al = ah_al >> 4, ah_al & 15
    blocks = sum(frame.comps[c][0] * frame.comps[c][1] for c in ids) if n > 1 else 1
    _check(blocks <= MAX_BLOCKS_IN_MCU)
    if frame.progressive:  # libjpeg's fatal checks: a refinement scan must refine by one bit
        _check(ss <= se <= 63 and al <= 13 and (ah == 0 or al == ah - 1) and (ss > 0 or se == 0)
               and (ss == 0 or n == 1))
    else:
        _check(ss == 0 and se == 63 and ah == 0 and al == 0)
    for j, c in enumerate(ids):
        td, ta = seg[2 + 2 * j] >> 4, seg[2 + 2 * j] & 15
        if ss == 0 and ah == 0:  # DC first scans decode with the DC table
            _check((0, td) in huff)
        if se > 0:  # AC scans with the AC table
            _check((1, ta) in huff)
        if ss == 0:
            seen[c] = True


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy data that starts at `pos` ends: the position of the next marker."""
    m = NEXT_MARKER.search(data, pos)
    _check(m is not None)
    return m.start()


def _walk(data: bytes, max_pixels: int, max_side: int | None) -> tuple[int, int]:
    _check(data[:2] == b"\xff\xd8")
    pos, frame = 2, None
    quant: set[int] = set()
    huff: set[tuple[int, int]] = set()
    dc_seen: dict[int, bool] = {}
    while True:
        _check(pos + 2 <= len(data) and data[pos] == 0xFF)
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        _check(pos < len(data))
        marker = data[pos]
        pos += 1
        if marker == EOI:
            _check(frame is not None and dc_seen.keys() == frame.comps.keys())
            return frame.width, frame.height
        standalone = marker in (SOI, 0x01, 0x00) or 0xD0 <= marker <= 0xD7
        _check(not standalone and marker not in OTHER_FRAMES)
        _check(pos + 2 <= len(data))
        length = struct.unpack(">H", data[pos : pos + 2])[0]
        _check(length >= 2 and pos + length <= len(data))
        seg, pos = data[pos + 2 : pos + length], pos + length
        if marker == DQT:
            quant.update(_dqt(seg))
        elif marker == DHT:
            huff.update(_dht(seg))
        elif marker in HUFFMAN_FRAMES:
            _check(frame is None)
            frame = _sof(marker, seg)
            _check(frame.width * frame.height <= max_pixels)
            _check(max_side is None or max(frame.width, frame.height) <= max_side)
        elif marker == DRI:
            _check(length == 4)
        elif marker == SOS:
            _sos(seg, frame, quant, huff=huff, seen=dc_seen)
            pos = _scan_end(data, pos)
        elif marker in (0xDC, 0xDE, 0xDF):
            raise _Unusual  # DNL, hierarchical markers (an Adobe APP14 is fine: 4 components are not)
        elif not (0xE0 <= marker <= 0xEF or marker == 0xFE):  # anything but APPn and COM
            raise _Unusual


def sound_jpeg(data: bytes, *, max_pixels: int, max_side: int | None = None) -> tuple[int, int] | None:
    """(width, height) when `data` is a whole, usual JPEG that decodes as it is (see the module
    docstring), else None: then decode it in full."""
    try:
        return _walk(data, max_pixels, max_side)
    except (_Unusual, struct.error, IndexError):
        return None
