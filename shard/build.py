"""Turn one split folder into shards: validate every image, write shards, then the manifest.

Work happens in two resumable phases, both in worker processes:

1. validate: each image is opened and fully decoded once; the verdict (keep, repair,
   skip) is appended to a journal `OUT/S/.work/validated.tsv`, keyed by path, size and
   mtime, so a rerun re-decodes only what it has not seen.
2. write: kept samples get consecutive indices; shard i (samples [i*K, (i+1)*K)) is
   written by one worker under a temporary name and renamed into place, and only then is
   its record `OUT/S/.work/<tar>.json` written. A rerun skips shards whose record and tar
   agree with the plan.

samples.tsv and manifest.json are written last; the manifest's presence means the split
is complete, and `.work/` is removed.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from shard import FORMAT
from shard.images import REPAIR, SKIP, Verdict, check_image, jpeg_payload
from shard.reader import MANIFEST, SAMPLES, SAMPLES_HEADER
from shard.scan import Candidate, list_candidates
from shard.writer import ShardFile, write_atomic, write_shard

log = logging.getLogger("shard")
WORK = ".work"
JOURNAL = "validated.tsv"


class StrictError(RuntimeError):
    """--strict was given and some files would have been skipped."""


@dataclass(frozen=True)
class Settings:
    """Everything that changes the bytes written; a resumed or repeated run must match it."""

    samples_per_shard: int = 1000
    quality: int = 95
    max_side: int | None = None


@dataclass(frozen=True)
class Summary:
    """What one split run produced, for the final report."""

    split: str
    samples: int
    shards: int
    skipped: list[dict]
    repaired: list[dict]
    bytes: int
    seconds: float
    already_complete: bool = False


def pool_map(fn: Callable, items: list, workers: int, chunksize: int = 1) -> Iterator:
    """`map(fn, items)` in order, over `workers` processes; a dead worker raises, never hangs."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        try:
            yield from pool.map(fn, items, chunksize=chunksize)
        except BrokenProcessPool as e:
            raise RuntimeError("a worker process died (out of memory or killed?)") from e


# -- phase 1: validation, with a journal -------------------------------------------------


def _identity(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}\t{st.st_mtime_ns}"


def _read_journal(path: Path) -> dict[tuple[str, str], Verdict]:
    """(relpath, identity) -> verdict for every whole line; a cut last line is cut off."""
    seen: dict[tuple[str, str], Verdict] = {}
    if not path.exists():
        return seen
    text = path.read_text(encoding="utf-8")
    whole = text[: text.rfind("\n") + 1]
    if len(whole) != len(text):
        os.truncate(path, len(whole.encode("utf-8")))
    for line in whole.split("\n")[:-1]:
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


def _check(args: tuple[str, int | None]) -> Verdict:
    return check_image(*args)


def validate(
    split_dir: Path, cands: list[Candidate], work: Path, max_side: int | None, workers: int
) -> list[Verdict]:
    """A verdict per candidate, decoding only files the journal has not seen unchanged."""
    journal_path = work / JOURNAL
    seen = _read_journal(journal_path)
    verdicts: dict[int, Verdict] = {}
    todo = []
    for i, c in enumerate(cands):
        problem = _name_problem(c.path)
        ident = None if problem else _identity(split_dir / c.path)
        if problem:
            verdicts[i] = Verdict(SKIP, problem)
        elif ident is not None and (c.path, ident) in seen:
            verdicts[i] = seen[(c.path, ident)]
        else:
            todo.append((i, ident))
    if verdicts:
        log.info("%s: %d of %d files already validated", split_dir.name, len(verdicts), len(cands))
    jobs = [(str(split_dir / cands[i].path), max_side) for i, _ in todo]
    bar = tqdm(total=len(jobs), desc=f"validate {split_dir.name}", unit="img", smoothing=0.1)
    with open(journal_path, "a", encoding="utf-8") as journal, bar:
        for (i, ident), v in zip(todo, pool_map(_check, jobs, workers, chunksize=16)):
            verdicts[i] = v
            if ident is not None:
                journal.write(f"{cands[i].path}\t{ident}\t{v.status}\t{_clean(v.detail)}\n")
            bar.update()
    return [verdicts[i] for i in range(len(cands))]


# -- phase 2: shards ----------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to write shard `tar_path`."""

    tar_path: Path
    keys: list[str]
    sources: list[str]
    labels: list[int | str]
    verdicts: list[Verdict]
    quality: int
    max_side: int | None

    def fingerprint(self) -> str:
        """Identifies the shard's planned content, so a stale record is never trusted."""
        h = hashlib.sha256()
        for key, src, label, v in zip(self.keys, self.sources, self.labels, self.verdicts):
            h.update(f"{key}\t{src}\t{label}\t{v.status}\t{v.detail}\n".encode())
        h.update(f"{self.quality}\t{self.max_side}".encode())
        return h.hexdigest()


def _write_job(job: ShardJob) -> ShardFile:
    samples = (
        (key, jpeg_payload(src, v, job.quality, job.max_side), label)
        for key, src, label, v in zip(job.keys, job.sources, job.labels, job.verdicts)
    )
    return write_shard(job.tar_path, samples)


def plan_shards(
    name: str, out: Path, split_dir: Path, kept: list[tuple[Candidate, Verdict]], settings: Settings
) -> list[ShardJob]:
    """Cut the kept samples into shards of `samples_per_shard`, in index order."""
    k = settings.samples_per_shard
    digits = max(8, len(str(max(len(kept) - 1, 0))))
    shard_digits = max(6, len(str(max((len(kept) - 1) // k, 0))))
    jobs = []
    for s, start in enumerate(range(0, len(kept), k)):
        part = kept[start : start + k]
        jobs.append(
            ShardJob(
                tar_path=out / f"{name}-{s:0{shard_digits}d}.tar",
                keys=[f"{start + j:0{digits}d}" for j in range(len(part))],
                sources=[str(split_dir / c.path) for c, _ in part],
                labels=[c.label for c, _ in part],
                verdicts=[v for _, v in part],
                quality=settings.quality,
                max_side=settings.max_side,
            )
        )
    return jobs


def _record_path(work: Path, job: ShardJob) -> Path:
    return work / (job.tar_path.name + ".json")


def _finished(work: Path, job: ShardJob) -> ShardFile | None:
    """The record of a shard already written by an earlier run, if it still holds."""
    path = _record_path(work, job)
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    ok = (
        rec.get("fingerprint") == job.fingerprint()
        and job.tar_path.exists()
        and job.tar_path.stat().st_size == rec["shard"]["bytes"]
        and job.tar_path.with_suffix(".idx").exists()
    )
    return ShardFile(**rec["shard"]) if ok else None


def write_shards(jobs: list[ShardJob], work: Path, workers: int, desc: str) -> list[ShardFile]:
    """Write every shard that is not already finished; return all records in order."""
    done = {i: rec for i, job in enumerate(jobs) if (rec := _finished(work, job)) is not None}
    if done:
        log.info("%s: %d of %d shards already written", desc, len(done), len(jobs))
    todo = [i for i in range(len(jobs)) if i not in done]
    total = sum(len(jobs[i].keys) for i in todo)
    with tqdm(total=total, desc=f"write {desc}", unit="img", smoothing=0.1) as bar:
        for i, rec in zip(todo, pool_map(_write_job, [jobs[i] for i in todo], workers)):
            record = {"fingerprint": jobs[i].fingerprint(), "shard": asdict(rec)}
            write_atomic(_record_path(work, jobs[i]), json.dumps(record).encode())
            done[i] = rec
            bar.update(rec.num_samples)
    return [done[i] for i in range(len(jobs))]


# -- the split as a whole -------------------------------------------------------------------


def _samples_tsv(kept: list[tuple[Candidate, Verdict]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
    w.writerow(SAMPLES_HEADER)
    w.writerows((i, c.label, c.path) for i, (c, _) in enumerate(kept))
    return buf.getvalue().encode("utf-8")


def _manifest(
    name: str, classes: list[str], settings: Settings, jobs: list[ShardJob], files: list[ShardFile],
    cands: list[Candidate], verdicts: list[Verdict],
) -> dict:
    pairs = list(zip(cands, verdicts))
    return {
        "format": FORMAT,
        "split": name,
        "classes": classes,
        "num_samples": sum(f.num_samples for f in files),
        "samples_per_shard": settings.samples_per_shard,
        "key_digits": len(jobs[0].keys[0]) if jobs else 8,
        "settings": asdict(settings),
        "shards": [asdict(f) for f in files],
        "skipped": [{"path": c.path, "reason": v.detail} for c, v in pairs if v.status == SKIP],
        "repaired": [
            {"path": c.path, "action": v.detail} for c, v in pairs if v.status == REPAIR
        ],
    }


def _check_settings(path: Path, settings: Settings, what: str) -> None:
    """Refuse to mix runs made with different settings in one output folder."""
    if not path.exists():
        return
    old = json.loads(path.read_text()).get("settings")
    if old != asdict(settings):
        raise ValueError(
            f"{path.parent}: {what} was made with settings {old}, not {asdict(settings)}; "
            "rerun with the same settings, or remove it to start over"
        )


def _lock(work: Path) -> object:
    """Hold an exclusive lock on the split while this process writes it."""
    f = open(work / "lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"{work.parent}: another shard run is writing this split") from None
    return f


def _strict_check(name: str, cands: list[Candidate], verdicts: list[Verdict]) -> None:
    bad = [(c.path, v.detail) for c, v in zip(cands, verdicts) if v.status == SKIP]
    if bad:
        listed = "; ".join(f"{name}/{p} ({why})" for p, why in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise StrictError(f"--strict: {len(bad)} file(s) cannot be sharded: {listed}{more}. "
                          "No shard was written.")


def shard_split(
    name: str, split_dir: Path, out: Path, classes: list[str], settings: Settings,
    workers: int, strict: bool = False, listed: list[Candidate] | None = None,
) -> Summary:
    """Validate and shard one split into `out/name`, resuming whatever an earlier run left.
    `listed` gives the samples of a multi-label list file instead of the class folders."""
    t0 = time.perf_counter()
    dest = out / name
    if (dest / MANIFEST).exists():
        _check_settings(dest / MANIFEST, settings, "the finished split")
        m = json.loads((dest / MANIFEST).read_text())
        log.info("%s: already complete (%s), nothing to do", name, dest / MANIFEST)
        size = sum(s["bytes"] for s in m["shards"])
        return Summary(name, m["num_samples"], len(m["shards"]), m["skipped"], m["repaired"],
                       size, time.perf_counter() - t0, already_complete=True)
    work = dest / WORK
    work.mkdir(parents=True, exist_ok=True)
    with _lock(work):
        _check_settings(work / "settings.json", settings, "an unfinished run")
        write_atomic(work / "settings.json", json.dumps({"settings": asdict(settings)}).encode())
        cands = listed if listed is not None else list_candidates(split_dir, classes)
        verdicts = validate(split_dir, cands, work, settings.max_side, workers)
        if strict:
            _strict_check(name, cands, verdicts)
        kept = [(c, v) for c, v in zip(cands, verdicts) if v.status != SKIP]
        jobs = plan_shards(name, dest, split_dir, kept, settings)
        files = write_shards(jobs, work, workers, name)
        manifest = _manifest(name, classes, settings, jobs, files, cands, verdicts)
        manifest["multilabel"] = listed is not None
        write_atomic(dest / SAMPLES, _samples_tsv(kept))
        write_atomic(dest / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    shutil.rmtree(work)
    return Summary(name, manifest["num_samples"], len(files), manifest["skipped"],
                   manifest["repaired"], sum(f.bytes for f in files), time.perf_counter() - t0)


def report(summaries: Iterable[Summary]) -> str:
    """One line per split, then the skip reasons counted."""
    lines, reasons = [], Counter()
    for s in summaries:
        state = " (already complete)" if s.already_complete else ""
        lines.append(
            f"{s.split}: {s.samples} samples in {s.shards} shards, {len(s.skipped)} skipped, "
            f"{len(s.repaired)} repaired, {s.bytes / 1e6:.1f} MB, {s.seconds:.1f} s{state}"
        )
        reasons.update(k["reason"].split(":")[0] for k in s.skipped)
    if reasons:
        counted = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        lines.append(f"skipped files by reason: {counted} (listed in each manifest.json)")
    return "\n".join(lines)
