"""Result files of the probe stage: CSV rows keyed by what they measure, in an output folder
that one command writes at a time, beside a record of the settings that made them.

    with ResultFile.open(out, "knn", identity=ident) as results:
        if ("vits16_800ep", 20) not in results.done: ...
        results.append(row)                      # flushed at once; a kill loses at most this row

`DIR/<name>.csv` holds the rows and `DIR/<name>.json` the identity (every setting that changes
a number: store groups, splits, solver settings). A rerun with the same identity skips rows
already there; with another identity it is refused, naming the differences. Readers
(`read_results`) refuse a file whose keys repeat: its rows would be counted twice.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from msnpipe.files import exclusive, naming, whole_lines, writable_dir, write_atomic
from msnpipe.runtime import UserError

LOCK = ".lock"


@dataclass(frozen=True)
class Kind:
    """The format of one result file: its columns, and the columns that key a row."""

    columns: tuple[str, ...]
    key: tuple[str, ...]


KINDS = {
    "fewshot": Kind(("encoder", "seed", "n_per_class", "n_labels", "test_acc", "test_loglik", "C", "backend",
                     "fit_seconds", "n_iter"), ("encoder", "seed", "n_per_class", "C")),
    "knn": Kind(("encoder", "k", "temperature", "top1", "top5"), ("encoder", "k")),
    "msn": Kind(("encoder", "subset", "images", "lambd", "top1", "backend", "fit_seconds", "n_iter"),
                ("encoder", "subset")),
    "multilabel": Kind(("encoder", "C", "mAP", "voc07_mAP", "classes", "train", "test", "backend",
                        "fit_seconds"), ("encoder", "C")),
    "active": Kind(("encoder", "strategy", "seed", "round", "n_labels", "test_acc", "test_loglik",
                    "select_seconds", "fit_seconds"), ("encoder", "strategy", "seed", "round")),
}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _key(row: dict, key: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in key)


def read_results(path: Path, key: tuple[str, ...] | None = None) -> list[dict]:
    """The rows of a result CSV (without a line cut short by a kill); a UserError if two rows
    share a key (by default, the key of the kind the file name says)."""
    key = key or KINDS[path.stem].key
    lines = whole_lines(path)
    rows = list(csv.DictReader(lines))
    if rows and not set(key) <= set(rows[0]):
        raise UserError(f"{path}: expected columns {', '.join(key)}, found {', '.join(rows[0])}")
    repeats = [k for k, n in Counter(_key(r, key) for r in rows).items() if n > 1]
    if repeats:
        raise UserError(f"{path}: {len(repeats)} rows repeat ({', '.join(key)}), e.g. {repeats[0]}; two "
                        "runs wrote it at once, or files were concatenated: its means would count them "
                        "twice. Remove the repeated rows, or the file, and rerun")
    return rows


class ResultFile:
    """Rows of one kind (`name`, a key of KINDS) in an output folder, appended as they finish."""

    def __init__(self, out: Path, name: str, record: dict | None = None):
        self.path, kind = out / f"{name}.csv", KINDS[name]
        self.columns, self.key = kind.columns, kind.key
        self.done = {_key(r, self.key) for r in read_results(self.path, self.key)}
        self.record = record  # written beside the first row of a new file

    @classmethod
    @contextmanager
    def open(cls, out: Path, name: str, identity: dict, *, settings: dict | None = None
             ) -> Iterator[ResultFile]:
        """Lock `out`, check (or record) `identity` in out/<name>.json, yield the file."""
        writable_dir(out, "--out")
        with exclusive(out / LOCK, f"{out}"):
            new = check_identity(out / f"{name}.json", out / f"{name}.csv", _jsonable(identity))
            yield cls(out, name, {"identity": identity, "settings": settings or {}} if new else None)

    def has(self, row: dict) -> bool:
        return _key(row, self.key) in self.done

    def append(self, row: dict) -> None:
        """Append one row and flush it (the first row of a new file records its settings first)."""
        if self.record is not None:
            body = json.dumps(_jsonable(self.record), indent=1) + "\n"
            write_atomic(self.path.with_suffix(".json"), body.encode())
            self.record = None
        new = not self.path.exists() or self.path.stat().st_size == 0
        with naming(self.path), open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            if new:
                w.writeheader()
            w.writerow(row)
        self.done.add(_key(row, self.key))


def check_identity(record: Path, rows: Path, identity: dict) -> bool:
    """Refuse rows made with other settings; return whether the result file is new."""
    if record.exists():
        old = json.loads(record.read_text()).get("identity", {})
        if diff := _differences(old, identity):
            raise UserError(f"{rows} was written with other settings ({'; '.join(diff)}); use another "
                            "--out, or remove it to start over")
        return False
    if rows.exists() and rows.stat().st_size:
        raise UserError(f"{rows}: no {record.name} records what made these rows; use another --out, or "
                        "remove it to start over")
    return True
