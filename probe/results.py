"""Result rows of the probe stage: appended to CSV files in an output folder."""

from __future__ import annotations

import csv
from pathlib import Path


def append_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    """Append rows to `path`, writing the header first when the file is new."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, list(columns or rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
