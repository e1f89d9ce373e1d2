"""Phase 1 of sharding a split: a verdict (keep, repair, skip) for every candidate file.

Each file is checked once, in worker processes (`shard.images.check_image`, CHUNK files a
task, so dispatching costs little next to a structural check); each verdict is appended to
the journal `OUT/S/.work/validated.tsv`, keyed by path, size and mtime, so a
rerun checks only files it has not seen unchanged. A journal line cut short by a kill is
cut off on the next run.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from msnpipe.files import whole_lines
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
        st = os.stat(split_dir / c.path)
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


def validate(split_dir: Path, cands: list[Candidate], work: Path, *, max_side: int | None,
             pool: ProcessPoolExecutor | None, how: str = "fast") -> list[Verdict]:
    """A verdict per candidate, checking only files the journal has not seen unchanged."""
    journal_path = work / JOURNAL
    seen = read_journal(journal_path)
    verdicts: dict[int, Verdict] = {}
    todo = []
    for i, c in enumerate(cands):
        known, ident = _known(split_dir, c)
        if known is None and ident is not None and (c.path, ident) in seen:
            known = seen[(c.path, ident)]
        if known is not None:
            verdicts[i] = known
        else:
            todo.append((i, ident))
    if verdicts:
        log.info("%s: %d of %d files already validated", split_dir.name, len(verdicts), len(cands))
    jobs = [str(split_dir / cands[i].path) for i, _ in todo]
    bar = tqdm(total=len(jobs), desc=f"validate {split_dir.name}", unit="img", smoothing=0.1)
    with open(journal_path, "a", encoding="utf-8") as journal, bar:
        for (i, ident), v in zip(todo, _checked(jobs, max_side, how, pool=pool)):
            verdicts[i] = v
            if ident is not None:
                journal.write(f"{cands[i].path}\t{ident}\t{v.status}\t{_clean(v.detail)}\n")
            bar.update()
    return [verdicts[i] for i in range(len(cands))]
