"""A verdict (keep, repair, skip, retry) for every candidate file of a split, in file order.

Each file is checked once, in worker processes (`shard.images.check_image`, CHUNK files a
task, so dispatching costs little next to a structural check); each verdict on a file's
content is appended to the journal `OUT/S/.work/validated.tsv`, keyed by path, size and mtime,
so a rerun checks only files it has not seen unchanged. A read error is never journaled: the
rerun reads the file again. A journal line cut short by a kill is cut off on the next run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from msnpipe.files import naming, whole_lines
from msnpipe.pool import ordered_map
from shard.images import SKIP, Verdict, check_image, not_regular
from shard.scan import Candidate

log = logging.getLogger("shard")
JOURNAL = "validated.tsv"
CHUNK = 64  # files a worker checks per task


def read_journal(path: Path) -> dict[tuple[str, str], Verdict]:
    """(relpath, identity) -> verdict for every whole line of the journal."""
    seen: dict[tuple[str, str], Verdict] = {}
    for line in whole_lines(path):
        fields = line.split("\t")
        if len(fields) == 5:
            seen[(fields[0], f"{fields[1]}\t{fields[2]}")] = Verdict(fields[3], fields[4])
    return seen


def _clean(text: str) -> str:
    return " ".join(text.split())


def _name_problem(rel: str) -> str | None:
    if "\t" in rel or "\n" in rel or "\r" in rel:
        return "bad file name: contains a tab or line break, which samples.tsv cannot hold"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "bad file name: not valid UTF-8"
    return None


def _known(split_dir: Path, c: Candidate) -> tuple[Verdict | None, str | None]:
    """(verdict known without opening the file, journal identity 'size<TAB>mtime_ns')."""
    problem = c.skip or _name_problem(c.path)
    if problem:
        return Verdict(SKIP, problem), None
    try:
        st = os.stat(os.path.join(split_dir, c.path))
    except OSError:
        return None, None  # check_image says why (dangling link, permission)
    if (why := not_regular(st.st_mode)) is not None:
        return Verdict(SKIP, why), None
    return None, f"{st.st_size}\t{st.st_mtime_ns}"


def _check(args: tuple[list[str], int | None, str]) -> list[Verdict]:
    paths, max_side, how = args
    return [check_image(p, max_side, how) for p in paths]


def _checked(jobs: list[str], max_side: int | None, how: str, *, pool: ProcessPoolExecutor | None):
    """check_image of every path, in order, CHUNK paths a task."""
    chunks = [(jobs[i : i + CHUNK], max_side, how) for i in range(0, len(jobs), CHUNK)]
    for verdicts in ordered_map(pool, _check, chunks):
        yield from verdicts


def verdicts(split_dir: Path, cands: list[Candidate], work: Path, *, max_side: int | None,
             pool: ProcessPoolExecutor | None, how: str = "fast") -> Iterator[Verdict]:
    """A verdict per candidate, in order, as they come: from the journal for files it has seen
    unchanged, else checked in the pool and journaled."""
    journal_path = work / JOURNAL
    seen = read_journal(journal_path)
    known: dict[int, Verdict] = {}
    todo = []
    for i, c in enumerate(cands):
        verdict, ident = _known(split_dir, c)
        if verdict is None and ident is not None and (c.path, ident) in seen:
            verdict = seen[(c.path, ident)]
        if verdict is not None:
            known[i] = verdict
        else:
            todo.append((i, ident))
    if known:
        log.info("%s: %d of %d files already validated", split_dir.name, len(known), len(cands))
    checked = _checked([os.path.join(split_dir, cands[i].path) for i, _ in todo], max_side, how, pool=pool)
    idents = dict(todo)
    bar = tqdm(total=len(todo), desc=f"validate {split_dir.name}", unit="img", smoothing=0.1)
    with naming(journal_path), open(journal_path, "a", encoding="utf-8") as journal, bar:
        for i, c in enumerate(cands):
            if i in known:
                yield known[i]
                continue
            v = next(checked)
            if idents[i] is not None and v.journal:
                journal.write(f"{c.path}\t{idents[i]}\t{v.status}\t{_clean(v.detail)}\n")
            bar.update()
            yield v
