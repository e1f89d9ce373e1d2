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
    """The format of one result file: its columns, the columns that key a row, and the columns
    every row must hold a number in (the others may be empty: n_iter of a backend without one)."""

    columns: tuple[str, ...]
    key: tuple[str, ...]
    numbers: tuple[str, ...] = ()


KINDS = {
    "fewshot": Kind(("encoder", "seed", "n_per_class", "n_labels", "test_acc", "test_loglik", "C", "backend",
                     "fit_seconds", "n_iter", "grad_norm", "converged"),
                    ("encoder", "seed", "n_per_class", "C"),
                    ("seed", "n_per_class", "n_labels", "test_acc", "test_loglik", "C")),
    "knn": Kind(("encoder", "k", "temperature", "top1", "top5"), ("encoder", "k"), ("k", "top1", "top5")),
    "msn": Kind(("encoder", "subset", "images", "lambd", "top1", "backend", "fit_seconds", "n_iter",
                 "grad_norm",
                 "converged"),
                ("encoder", "subset"), ("images", "lambd", "top1")),
    "multilabel": Kind(("encoder", "C", "mAP", "voc07_mAP", "classes", "train", "test", "backend",
                        "fit_seconds"), ("encoder", "C"), ("C", "mAP", "voc07_mAP")),
    "active": Kind(("encoder", "strategy", "seed", "round", "n_labels", "test_acc", "test_loglik",
                    "select_seconds", "fit_seconds", "grad_norm", "converged"),
                   ("encoder", "strategy", "seed", "round"),
                   ("seed", "round", "n_labels", "test_acc", "test_loglik")),
}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _key(row: dict, key: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in key)


def _number(text: str | None) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _check_rows(path: Path, rows: list[dict], kind: Kind | None) -> None:
    """Every row whole (as many fields as the header) and its numbers numbers."""
    for i, row in enumerate(rows, 2):
        bad = None in row or None in row.values()
        bad = bad or (kind is not None and not all(_number(row.get(c)) for c in kind.numbers if c in row))
        if bad:
            raise UserError(f"{path}: line {i} is not a row of this file ({list(row.values())[:6]}); it was "
                            "edited or damaged: remove that line, or the file, and rerun")


def read_results(path: Path, key: tuple[str, ...] | None = None) -> list[dict]:
    """The rows of a result CSV (without a line cut short by a kill), each checked; a UserError if
    two rows share a key (by default, the key of the kind the file name says)."""
    kind = KINDS.get(path.stem)
    key = key or kind.key
    try:
        lines = whole_lines(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file ({e}); remove it and rerun") from None
    rows = list(csv.DictReader(lines))
    if rows and not set(key) <= set(rows[0]):
        raise UserError(f"{path}: expected columns {', '.join(key)}, found {', '.join(map(str, rows[0]))}")
    _check_rows(path, rows, kind)
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
        """Append one row and flush it (the first row of a new file records its settings first); a
        row whose key the file holds already is refused (its means would count it twice)."""
        if _key(row, self.key) in self.done:
            raise UserError(f"{self.path}: already holds {_key(row, self.key)} ({', '.join(self.key)}); a "
                            "result is never written twice")
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


def group_identity(train, test, *, train_key: str = "train_split", **settings) -> dict:
    """What a result file's numbers were computed from: the encoder, both splits (`train_key`
    names the first: probe.active's is its pool) and the identities of their store groups,
    then the settings that change a number (seeds and counts, which only select rows, are keys
    of the rows instead). Every probe command records this in <kind>.json and resumes only where
    it is the same."""
    return {"encoder": train.encoder, train_key: train.split, "test_split": test.split,
            "train_identity": train.attrs.get("identity"), "test_identity": test.attrs.get("identity"),
            **settings}


def check_identity(record: Path, rows: Path, identity: dict) -> bool:
    """Refuse rows made with other settings; return whether the result file is new."""
    if record.exists():
        try:
            old = json.loads(record.read_text()).get("identity", {})
        except (ValueError, AttributeError, UnicodeDecodeError) as e:
            raise UserError(f"{record}: not valid JSON ({e}); it records what made {rows.name}: remove "
                            "both, or use another --out") from None
        if diff := _differences(old, identity):
            raise UserError(f"{rows} was written with other settings ({'; '.join(diff)}); use another "
                            "--out, or remove it to start over")
        return False
    if rows.exists() and rows.stat().st_size:
        raise UserError(f"{rows}: no {record.name} records what made these rows; use another --out, or "
                        "remove it to start over")
    return True
