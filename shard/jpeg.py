"""A structural JPEG check, at the speed of reading the bytes: is this a usual, whole JPEG?

    size, problem = inspect(data)   # ((width, height), None) when sound; (None, "what is unusual")
    sound_jpeg(data, max_pixels=..., max_side=None) -> (width, height) or None

It walks the marker segments by their lengths and checks what libjpeg checks before it
decodes, and also what it only warns about (a frame of 8-bit samples with 1 or 3 components,
Huffman coding, sequential or progressive; every quantization and Huffman table a scan uses
defined and well formed, no complete or over-full Huffman code; component ids, sampling
factors and scan parameters libjpeg accepts; libjpeg's progression rules, coefficient by
coefficient; every component scanned, once in a sequential file; no bytes between segments, no
stray marker, no segment shorter than its length field; restart markers in order and as many as
the restart interval implies), then follows the entropy data from marker to marker until EOI.
It answers a size only when all of that holds; anything else gets the reason, in words, and
the caller decodes the file in full (a JPEG that only a lenient decoder reads is re-encoded,
never kept as it is). Bytes inside the entropy data are not decoded: flipped bits there, and an
EOI that comes early, decode with a warning in every decoder the embed stage offers (libjpeg's,
DALI's and nvImageCodec's, tests/test_shard_jpeg.py), so files holding them are kept.
"""

from __future__ import annotations

import functools
import re
import struct

SOI, EOI, SOS, DHT, DQT, DRI = 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD
HUFFMAN_FRAMES = {0xC0: False, 0xC1: False, 0xC2: True}  # SOF marker -> progressive
OTHER_FRAMES = {  # frames no decoder of the embed stage reads as they are
    0xC3: "lossless coding (SOF3)", 0xC5: "hierarchical coding (SOF5)", 0xC6: "hierarchical coding (SOF6)",
    0xC7: "hierarchical lossless coding (SOF7)", 0xC9: "arithmetic coding (SOF9)",
    0xCA: "arithmetic progressive coding (SOF10)", 0xCB: "arithmetic lossless coding (SOF11)",
    0xCD: "hierarchical arithmetic coding (SOF13)", 0xCE: "hierarchical arithmetic coding (SOF14)",
    0xCF: "hierarchical arithmetic lossless coding (SOF15)",
}
# what a usual file holds between SOI and EOI: tables, one frame, scans, restart intervals, APPn (an
# Adobe APP14 is fine: 4 components are not) and COM; anything else (DNL, DAC, TEM, a stray RST...)
HEADER_MARKERS = {DQT, DHT, DRI, SOS, *HUFFMAN_FRAMES, *range(0xE0, 0xF0), 0xFE}
MAX_DIMENSION = 65500  # libjpeg's JPEG_MAX_DIMENSION
MAX_BLOCKS_IN_MCU = 10  # libjpeg's D_MAX_BLOCKS_IN_MCU
# the end of entropy data, or a restart marker in it: 0xFF then neither a stuffed 0x00 nor a fill
# byte (no `+` after \xff: the regex engine then finds candidates with its literal-prefix search)
NEXT_MARKER = re.compile(rb"\xff[^\x00\xff]")


class _Unusual(Exception):
    """Anything the structural check does not vouch for; its message says what."""


class _Frame:
    def __init__(self, progressive: bool, width: int, height: int, *, comps: dict[int, tuple[int, int, int]]):
        self.progressive, self.width, self.height, self.comps = progressive, width, height, comps
        self.max_h = max(h for h, _, _ in comps.values())
        self.max_v = max(v for _, v, _ in comps.values())
        # per component: the successive-approximation bit of each coefficient (-1: not yet seen),
        # as libjpeg's coef_bits; a sequential scan sets all 64 at once
        self.bits = {c: [-1] * 64 for c in comps}

    def mcus(self, ids: list[int]) -> int:
        """MCUs of a scan of components `ids`: one block each when it holds a single component."""
        if len(ids) > 1:
            return _ceil(self.width, 8 * self.max_h) * _ceil(self.height, 8 * self.max_v)
        h, v, _ = self.comps[ids[0]]
        return _ceil(_ceil(self.width * h, self.max_h), 8) * _ceil(_ceil(self.height * v, self.max_v), 8)


def _ceil(a: int, b: int) -> int:
    return -(a // -b)


def _check(ok: bool, why: str) -> None:
    if not ok:
        raise _Unusual(why)


@functools.lru_cache(maxsize=256)
def _dqt(seg: bytes) -> tuple[int, ...]:
    """The ids of a DQT segment's tables, each checked. Files from one encoder and quality share
    their segments, so each distinct segment is checked once (here and in _dht)."""
    i, ids = 0, []
    while i < len(seg):
        pq, tq = seg[i] >> 4, seg[i] & 15
        if not (pq <= 1 and tq < 4):
            raise _Unusual(f"quantization table {tq} of precision {pq}")
        i += 1 + 64 * (pq + 1)
        _check(i <= len(seg), "a quantization table cut short")
        ids.append(tq)
    return tuple(ids)


def huffman_problem(counts: bytes, values: bytes, dc: bool) -> str | None:
    """What libjpeg refuses in a Huffman table (jdhuff.c), or None: more than 256 codes, codes of
    some length that do not fit in it, a complete code (its last code all ones, which libjpeg
    rejects as `code >= 1 << length`), a DC symbol above 15."""
    if sum(counts) > 256:
        return f"a Huffman table of {sum(counts)} codes (at most 256)"
    code = 0
    for length, n in enumerate(counts, 1):
        code += n
        if code >= 1 << length:
            return f"an over-full or complete Huffman code at length {length}"
        code <<= 1
    if dc and any(v > 15 for v in values):
        return "a DC Huffman symbol above 15"
    return None


@functools.lru_cache(maxsize=256)
def _dht(seg: bytes) -> tuple[tuple[int, int], ...]:
    """The (class, id) of a DHT segment's tables, each checked as libjpeg checks it."""
    i, ids = 0, []
    while i < len(seg):
        _check(i + 17 <= len(seg), "a Huffman table cut short")
        tc, th = seg[i] >> 4, seg[i] & 15
        counts = seg[i + 1 : i + 17]
        n = sum(counts)
        values = seg[i + 17 : i + 17 + n]
        if not (tc <= 1 and th < 4):
            raise _Unusual(f"Huffman table class {tc}, id {th}")
        _check(len(values) == n, "a Huffman table cut short")
        problem = huffman_problem(counts, values, tc == 0)
        if problem is not None:
            raise _Unusual(f"{problem} ({'DC' if tc == 0 else 'AC'} table {th})")
        ids.append((tc, th))
        i += 17 + n
    return tuple(ids)


def _sof(marker: int, seg: bytes) -> _Frame:
    _check(len(seg) >= 6, "a frame header cut short")
    precision, height, width, n = struct.unpack(">BHHB", seg[:6])
    if precision != 8:
        raise _Unusual(f"{precision}-bit samples")
    if not (0 < height <= MAX_DIMENSION and 0 < width <= MAX_DIMENSION):
        raise _Unusual(f"a size of {width}x{height}")
    if n not in (1, 3):
        raise _Unusual(f"{n} components (1 or 3 expected: CMYK and YCCK are converted)")
    _check(len(seg) == 6 + 3 * n, "a frame header of the wrong length")
    comps = {}
    for j in range(n):
        cid, hv, tq = seg[6 + 3 * j : 9 + 3 * j]
        h, v = hv >> 4, hv & 15
        if cid in comps:
            raise _Unusual(f"component id {cid} twice")
        if not (1 <= h <= 4 and 1 <= v <= 4 and tq < 4):
            raise _Unusual(f"component {cid}: sampling {h}x{v}, table {tq}")
        comps[cid] = (h, v, tq)
    frame = _Frame(HUFFMAN_FRAMES[marker], width, height, comps=comps)
    _check(all(frame.max_h % h == 0 and frame.max_v % v == 0 for h, v, _ in comps.values()),
           "sampling factors that do not divide the largest")  # libjpeg upsamples by whole factors
    return frame


def _progression(frame: _Frame, ids: list[int], *, ss: int, se: int, ah: int, al: int) -> None:
    """libjpeg's progression rules (jdphuff.c start_pass): an AC scan needs the component's DC
    first, and each coefficient is refined from the bit the previous scan left; a sequential
    file scans each component once."""
    for c in ids:
        bits = frame.bits[c]
        if not frame.progressive:
            if bits[0] >= 0:
                raise _Unusual(f"component {c} in two scans of a sequential file")
            bits[:] = [0] * 64
            continue
        if not (ss == 0 or bits[0] >= 0):
            raise _Unusual(f"an AC scan of component {c} before its DC scan")
        band = bits[ss : se + 1]
        ok = max(band) <= 0 if ah == 0 else min(band) == ah == max(band)
        if not ok:
            raise _Unusual(f"an inconsistent progression for component {c}, coefficients {ss}-{se}")
        bits[ss : se + 1] = [al] * (se + 1 - ss)


def _sos(seg: bytes, frame: _Frame | None, quant: set[int], *, huff: set[tuple[int, int]]) -> list[int]:
    """One scan header, checked as libjpeg checks it; the ids of the components it holds."""
    _check(frame is not None, "a scan before the frame header")
    _check(len(seg) >= 1, "a scan header cut short")
    n = seg[0]
    _check(1 <= n <= 4 and len(seg) == 4 + 2 * n, "a scan header of the wrong length")
    ids = [seg[1 + 2 * j] for j in range(n)]
    if not (len(set(ids)) == n and all(c in frame.comps for c in ids)):
        raise _Unusual(f"scan components {ids}")
    _check(all(frame.comps[c][2] in quant for c in ids), "a quantization table not defined")
    ss, se, ah_al = seg[1 + 2 * n], seg[2 + 2 * n], seg[3 + 2 * n]
    ah, al = ah_al >> 4, ah_al & 15
    blocks = sum(frame.comps[c][0] * frame.comps[c][1] for c in ids) if n > 1 else 1
    if blocks > MAX_BLOCKS_IN_MCU:
        raise _Unusual(f"{blocks} blocks in an MCU")
    if frame.progressive:  # libjpeg's fatal checks: a refinement scan must refine by one bit
        if not (ss <= se <= 63 and al <= 13 and (ah == 0 or al == ah - 1) and (ss > 0 or se == 0)
                and (ss == 0 or n == 1)):
            raise _Unusual(f"progressive scan parameters {ss}-{se}, {ah}/{al}")
    else:
        _check(ss == 0 and se == 63 and ah == 0 and al == 0, "sequential scan parameters")
    for j in range(n):
        td, ta = seg[2 + 2 * j] >> 4, seg[2 + 2 * j] & 15
        if ss == 0 and ah == 0:  # DC first scans decode with the DC table
            if (0, td) not in huff:
                raise _Unusual(f"DC Huffman table {td} not defined")
        if se > 0:  # AC scans with the AC table
            if (1, ta) not in huff:
                raise _Unusual(f"AC Huffman table {ta} not defined")
    _progression(frame, ids, ss=ss, se=se, ah=ah, al=al)
    return ids


def _scan_end(data: bytes, pos: int, *, restarts: int) -> int:
    """Where the entropy data that starts at `pos` ends (the position of the next marker), having
    checked its restart markers: RST0, RST1, ... in order, exactly `restarts` of them."""
    m, seen = NEXT_MARKER.search(data, pos), 0
    while m is not None and 0xD0 <= data[m.start() + 1] <= 0xD7:
        rst = data[m.start() + 1] - 0xD0
        if seen >= restarts:
            raise _Unusual(f"RST{rst} at byte {m.start()}, beyond the restart interval's markers")
        if rst != seen % 8:
            raise _Unusual(f"restart markers out of order (RST{rst} where RST{seen % 8} belongs)")
        seen += 1
        m = NEXT_MARKER.search(data, m.end())
    _check(m is not None, "no EOI: the data ends inside a scan")
    if seen != restarts:
        raise _Unusual(f"{seen} restart markers in a scan that needs {restarts}")
    return m.start()


def _marker_name(marker: int) -> str:
    if 0xD0 <= marker <= 0xD7:
        return f"RST{marker - 0xD0} (0x{marker:02X})"
    names = {SOI: "SOI", 0x01: "TEM", 0x00: "a stuffed FF00", 0xDC: "DNL", 0xDE: "DHP", 0xDF: "EXP",
             0xCC: "DAC", 0xC8: "JPG"}
    return names.get(marker, f"marker 0x{marker:02X}")


def _segment(data: bytes, pos: int, marker: int) -> tuple[bytes, int]:
    """(payload, position after it) of the segment whose length field is at `pos`."""
    _check(pos + 2 <= len(data), "no EOI: the data ends inside a marker")
    length = struct.unpack(">H", data[pos : pos + 2])[0]
    if length < 2:
        raise _Unusual(f"a segment length of {length} ({_marker_name(marker)} at byte {pos - 2})")
    _check(pos + length <= len(data), "no EOI: the data ends inside a segment")
    return data[pos + 2 : pos + length], pos + length


def _walk(data: bytes) -> tuple[int, int]:
    _check(data[:2] == b"\xff\xd8", "not a JPEG (no SOI)")
    pos, frame, interval = 2, None, 0
    quant: set[int] = set()
    huff: set[tuple[int, int]] = set()
    while True:
        _check(pos < len(data), "no EOI: the data ends between segments")
        if data[pos] != 0xFF:
            raise _Unusual(f"bytes between segments, at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        _check(pos < len(data), "no EOI: the data ends in fill bytes")
        marker = data[pos]
        pos += 1
        if marker == EOI:
            _check(frame is not None, "EOI before any frame")
            missing = [c for c, bits in frame.bits.items() if bits[0] < 0]
            if missing:
                raise _Unusual(f"no DC scan for component {', '.join(map(str, missing))}")
            return frame.width, frame.height
        _check(marker not in OTHER_FRAMES, OTHER_FRAMES.get(marker, ""))
        if marker not in HEADER_MARKERS:
            raise _Unusual(f"{_marker_name(marker)} at byte {pos - 1}")
        seg, pos = _segment(data, pos, marker)
        if marker == DQT:
            quant.update(_dqt(seg))
        elif marker == DHT:
            huff.update(_dht(seg))
        elif marker in HUFFMAN_FRAMES:
            _check(frame is None, "a second frame header")
            frame = _sof(marker, seg)
        elif marker == DRI:
            _check(len(seg) == 2, "a DRI segment of the wrong length")
            interval = struct.unpack(">H", seg)[0]
        elif marker == SOS:
            ids = _sos(seg, frame, quant, huff=huff)
            restarts = -(-frame.mcus(ids) // interval) - 1 if interval else 0
            pos = _scan_end(data, pos, restarts=restarts)
        # APPn and COM segments are skipped by their length


def inspect(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) when `data` is a whole, usual JPEG that decodes as it is (see the
    module docstring); else (None, what is unusual, in words)."""
    try:
        return _walk(data), None
    except _Unusual as e:
        return None, str(e)
    except (struct.error, IndexError):
        return None, "a header cut short"


def sound_jpeg(data: bytes, *, max_pixels: int, max_side: int | None = None) -> tuple[int, int] | None:
    """(width, height) when `data` is a whole, usual JPEG of at most `max_pixels` pixels and
    `max_side` on its longer side; else None (then decode it in full)."""
    size, _ = inspect(data)
    if size is None or size[0] * size[1] > max_pixels or (max_side is not None and max(size) > max_side):
        return None
    return size
