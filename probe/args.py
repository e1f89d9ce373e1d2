"""Command-line values the probe commands share: ranges of seeds and label counts, C grids."""

from __future__ import annotations

import argparse

MAX_VALUES = 100_000  # a range longer than this is a typo, not a plan (and would exhaust memory)


def int_list(text: str) -> tuple[int, ...]:
    """'1-10' or '1,2,5' (or a mix: '0-4,10') as a tuple of non-negative ints."""
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi if dash else lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1-10 or 1,2,5") from None
        if a < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected non-negative numbers like 1-10")
        if b < a:
            raise argparse.ArgumentTypeError(f"{text!r} is an empty range ({part}: the end is below "
                                             "the start)")
        if len(out) + b - a + 1 > MAX_VALUES:
            raise argparse.ArgumentTypeError(f"{text!r} asks for {len(out) + b - a + 1} values; at most "
                                             f"{MAX_VALUES}")
        out += range(a, b + 1)
    return tuple(out)


def float_list(text: str) -> tuple[float, ...]:
    """'1' or '0.01,0.1,1' as a tuple of positive floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1 or 0.01,0.1,1") from None
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: C must be > 0")
    return values
