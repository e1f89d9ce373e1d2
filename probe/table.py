"""python -m probe.table DIR [DIR ...]: one markdown table of every result in probe outputs.

    python -m probe.table out/probe

Rows are encoders. Columns: few-shot top-1 (mean over seeds) at 1, 2 and 5 labels per
class from fewshot.csv (C=1 when a sweep was run, else its only C), the MSN protocol's
top-1 per subset file from msn.csv (1imgs_class, 2imgs_class, 5imgs_class, 1percent), and
kNN top-1 per k from knn.csv. probe.active's active.csv adds a row per strategy
("<encoder> [<strategy>]") with its top-1 at each label count ("N labels").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from msnpipe.runtime import UserError
from probe.results import read_results

FEWSHOT_N = (1, 2, 5)


def _read(path: Path) -> list[dict]:
    return read_results(path) if path.exists() else []


def collect(dirs: list[Path]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(column names, encoder -> column -> top-1 %)."""
    cells: dict[str, dict[str, float]] = defaultdict(dict)
    columns: list[str] = []

    def put(encoder: str, column: str, value: float) -> None:
        cells[encoder][column] = value
        if column not in columns:
            columns.append(column)

    for d in dirs:
        few = _read(d / "fewshot.csv")
        Cs = {float(r["C"]) for r in few}
        keep_c = 1.0 if 1.0 in Cs else (min(Cs) if Cs else None)
        acc: dict[tuple[str, int], list[float]] = defaultdict(list)
        for r in few:
            if float(r["C"]) == keep_c and int(r["n_per_class"]) in FEWSHOT_N:
                acc[(r["encoder"], int(r["n_per_class"]))].append(float(r["test_acc"]))
        for (enc, n), v in sorted(acc.items(), key=lambda kv: kv[0][1]):
            put(enc, f"{n}/class", 100 * float(np.mean(v)))
        for r in _read(d / "msn.csv"):
            put(r["encoder"], f"MSN {r['subset'].removesuffix('.txt')}", 100 * float(r["top1"]))
        for r in _read(d / "knn.csv"):
            put(r["encoder"], f"kNN k={r['k']}", 100 * float(r["top1"]))
        active: dict[tuple[str, int], list[float]] = defaultdict(list)
        for r in _read(d / "active.csv"):
            active[(f"{r['encoder']} [{r['strategy']}]", int(r["n_labels"]))].append(float(r["test_acc"]))
        for (row, n), v in sorted(active.items(), key=lambda kv: kv[0][1]):
            put(row, f"{n} labels", 100 * float(np.mean(v)))
    return columns, cells


def markdown(columns: list[str], cells: dict[str, dict[str, float]]) -> str:
    lines = ["| encoder | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for enc in sorted(cells):
        vals = [f"{cells[enc][c]:.1f}" if c in cells[enc] else "–" for c in columns]
        lines.append(f"| {enc} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probe.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", type=Path, nargs="+")
    a = p.parse_args(argv)
    try:
        columns, cells = collect(a.dirs)
    except UserError as e:
        print(f"probe.table: {e}", file=sys.stderr)
        return 1
    if not cells:
        print(f"probe.table: no fewshot.csv, msn.csv, knn.csv or active.csv in {', '.join(map(str, a.dirs))}",
              file=sys.stderr)
        return 1
    print(markdown(columns, cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
