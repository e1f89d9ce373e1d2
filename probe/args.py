"""Command-line values the probe commands share: ranges of seeds and label counts, C grids, and
numbers that must be positive. A repeated value is refused (it would write a result row twice)."""

from __future__ import annotations

import argparse
import math

MAX_VALUES = 100_000  # a range longer than this is a typo, not a plan (and would exhaust memory)


def _no_repeats(text: str, values: list) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise argparse.ArgumentTypeError(f"{text!r}: {v} appears twice (each value gives its own rows)")
        seen.add(v)


def int_list(text: str) -> tuple[int, ...]:
    """'1-10' or '1,2,5' (or a mix: '0-4,10') as a tuple of distinct non-negative ints."""
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
    _no_repeats(text, out)
    return tuple(out)


def float_list(text: str) -> tuple[float, ...]:
    """'1' or '0.01,0.1,1' as a tuple of distinct finite positive floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1 or 0.01,0.1,1") from None
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: C must be a finite number > 0")
    _no_repeats(text, list(values))
    return values


def positive_float(text: str) -> float:
    """A finite number > 0 (a temperature, a weight, a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number > 0")
    return value


def at_least(low: int):
    """An argparse type: a whole number >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {low}")
        return value
    parse.__name__ = f"whole number >= {low}"
    return parse
