"""python -m probe.table DIR [DIR ...]: one markdown table of every result in probe outputs.

    python -m probe.table out/probe

Rows are encoders. Columns: few-shot top-1 (mean over seeds) at 1, 2 and 5 labels per
class from fewshot.csv (C=1 when a sweep was run, else its only C), the MSN protocol's
top-1 per subset file from msn.csv (1imgs_class, 2imgs_class, 5imgs_class, 1percent), and
kNN top-1 per k from knn.csv. probe.active's active.csv adds a row per strategy
("<encoder> [<strategy>]") with its top-1 at each label count ("N labels"). A cell marked *
averages fits that stopped short of the optimum (converged 0 in their rows).
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


def collect(dirs: list[Path], flagged: set[tuple[str, str]] | None = None
            ) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(column names, encoder -> column -> top-1 %); `flagged` gets the (row, column) cells that
    average a fit which did not converge."""
    cells: dict[str, dict[str, float]] = defaultdict(dict)
    columns: list[str] = []
    flagged = set() if flagged is None else flagged

    def put(encoder: str, column: str, value: float, rows: list[dict] = ()) -> None:
        cells[encoder][column] = value
        if column not in columns:
            columns.append(column)
        if any(r.get("converged") == "0" for r in rows):
            flagged.add((encoder, column))

    for d in dirs:
        few = _read(d / "fewshot.csv")
        Cs = {float(r["C"]) for r in few}
        keep_c = 1.0 if 1.0 in Cs else (min(Cs) if Cs else None)
        acc: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in few:
            if float(r["C"]) == keep_c and int(r["n_per_class"]) in FEWSHOT_N:
                acc[(r["encoder"], int(r["n_per_class"]))].append(r)
        for (enc, n), rs in sorted(acc.items(), key=lambda kv: kv[0][1]):
            put(enc, f"{n}/class", 100 * float(np.mean([float(r["test_acc"]) for r in rs])), rs)
        for r in _read(d / "msn.csv"):
            put(r["encoder"], f"MSN {r['subset'].removesuffix('.txt')}", 100 * float(r["top1"]), [r])
        for r in _read(d / "knn.csv"):
            put(r["encoder"], f"kNN k={r['k']}", 100 * float(r["top1"]))
        active: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in _read(d / "active.csv"):
            active[(f"{r['encoder']} [{r['strategy']}]", int(r["n_labels"]))].append(r)
        for (row, n), rs in sorted(active.items(), key=lambda kv: kv[0][1]):
            put(row, f"{n} labels", 100 * float(np.mean([float(r["test_acc"]) for r in rs])), rs)
    return columns, cells


def markdown(columns: list[str], cells: dict[str, dict[str, float]],
             flagged: set[tuple[str, str]] = frozenset()) -> str:
    lines = ["| encoder | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for enc in sorted(cells):
        vals = [f"{cells[enc][c]:.1f}" + ("*" if (enc, c) in flagged else "") if c in cells[enc] else "–"
                for c in columns]
        lines.append(f"| {enc} | " + " | ".join(vals) + " |")
    if flagged:
        lines.append("\n\\* averages fits that were not converged: their numbers depend on the solver "
                     "(the rows' grad_norm column says how far each stopped)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probe.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", type=Path, nargs="+")
    a = p.parse_args(argv)
    try:
        flagged: set[tuple[str, str]] = set()
        columns, cells = collect(a.dirs, flagged)
    except UserError as e:
        print(f"probe.table: {e}", file=sys.stderr)
        return 1
    if not cells:
        print(f"probe.table: no fewshot.csv, msn.csv, knn.csv or active.csv in {', '.join(map(str, a.dirs))}",
              file=sys.stderr)
        return 1
    print(markdown(columns, cells, flagged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
