"""Turn one split folder into shards: a verdict per image, the shards, then the manifest.

Two resumable steps overlap in one pool of worker processes: verdicts stream in file order
(`shard.validate`: keep, repair or skip, journaled), and kept samples get consecutive
indices; as soon as shard i (samples [i*K, (i+1)*K)) has its K samples it is written by a
worker under a temporary name and renamed into place, and only then is its record
`OUT/S/.work/<tar>.json` written. A rerun skips shards whose record and tar agree with the
plan. (--strict takes every verdict before the first shard.)

samples.tsv and manifest.json are written last; the manifest's presence means the split
is complete, and `.work/` is removed. With OUT a URL the same build runs in a local stage and
shard.publish uploads each shard once recorded, and the manifest last (the commit).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from msnpipe import remote
from msnpipe.files import exclusive, write_atomic
from msnpipe.pool import result
from msnpipe.runtime import UserError
from shard import FORMAT
from shard.images import REPAIR, RETRY, SKIP, Verdict, jpeg_payload
from shard.publish import Publisher
from shard.reader import (
    MANIFEST,
    SAMPLES,
    SAMPLES_HEADER,
    ShardFormatError,
    open_split,
    read_manifest,
    shard_span,
)
from shard.scan import Candidate, list_candidates
from shard.validate import verdicts
from shard.writer import ShardFile, write_tar

log = logging.getLogger("shard")
WORK = ".work"


class StrictError(UserError):
    """--strict was given and some files would have been skipped."""


class RetryError(UserError):
    """Some files could not be read this time; the split stays unfinished for a rerun."""


@dataclass(frozen=True)
class Settings:
    """Everything that changes the bytes written; a resumed or repeated run must match it."""

    samples_per_shard: int = 1000
    quality: int = 95
    max_side: int | None = None
    validate: str = "fast"  # fast: usual JPEGs kept on their structure; full: every file decoded


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
        (key, jpeg_payload(src, v, job.quality, max_side=job.max_side), label)
        for key, src, label, v in zip(job.keys, job.sources, job.labels, job.verdicts)
    )
    return write_tar(job.tar_path, samples)


def key_digits(candidates: int, samples_per_shard: int) -> tuple[int, int]:
    """(digits of a sample key, digits of a shard number), at least 8 and 6, sized by the number
    of candidate files so that shards can be cut before every verdict is in."""
    last = max(candidates - 1, 0)
    return max(8, len(str(last))), max(6, len(str(last // samples_per_shard)))


def plan_shard(name: str, out: Path, split_dir: Path, *, index: int, part: list[tuple[Candidate, Verdict]],
               settings: Settings, digits: tuple[int, int]) -> ShardJob:
    """Shard `index` of the split: its first len(part) sample indices (shard.reader.shard_span)."""
    span = shard_span(index, settings.samples_per_shard, index * settings.samples_per_shard + len(part))
    return ShardJob(
        tar_path=out / f"{name}-{index:0{digits[1]}d}.tar",
        keys=[f"{key:0{digits[0]}d}" for key in span],
        sources=[os.path.join(split_dir, c.path) for c, _ in part],
        labels=[c.label for c, _ in part],
        verdicts=[v for _, v in part],
        quality=settings.quality,
        max_side=settings.max_side,
    )


def _record_path(work: Path, job: ShardJob) -> Path:
    return work / (job.tar_path.name + ".json")


def _finished(work: Path, job: ShardJob, publisher: Publisher | None = None) -> ShardFile | None:
    """The record of a shard already written by an earlier run, if it still holds: its tar and
    index in place (or, publishing, already up)."""
    path = _record_path(work, job)
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    if rec.get("fingerprint") != job.fingerprint():
        return None
    shard = ShardFile(**rec["shard"])
    here = (job.tar_path.exists() and job.tar_path.stat().st_size == shard.bytes
            and job.tar_path.with_suffix(".idx").exists())
    return shard if here or (publisher is not None and publisher.has(shard)) else None


class ShardWriter:
    """Cuts kept samples into shards as their verdicts come in and writes each in the pool as soon
    as it is full (the files still in the page cache); a shard's record is written only once the
    shard is, and shards an earlier run finished are not written again. After a file to retry,
    no shard is cut: where the later ones start depends on whether that file is kept."""

    def __init__(self, name: str, dest: Path, split_dir: Path, *, work: Path, settings: Settings,
                 pool: ProcessPoolExecutor | None, candidates: int, publisher: Publisher | None = None):
        self.name, self.dest, self.split_dir, self.work = name, dest, split_dir, work
        self.publisher = publisher
        self.settings, self.pool = settings, pool
        self.digits = key_digits(candidates, settings.samples_per_shard)
        self.kept: list[tuple[Candidate, Verdict]] = []
        self.retry: list[tuple[Candidate, Verdict]] = []
        self.jobs: list[ShardJob] = []
        self.files: list[ShardFile] = []
        self.pending: list[tuple[bool, Future | ShardFile]] = []  # (written before?, shard)
        self.bar = tqdm(desc=f"write {name}", unit="img", smoothing=0.1)

    def add(self, cand: Candidate, verdict: Verdict) -> None:
        if verdict.status == RETRY:
            self.retry.append((cand, verdict))
        elif verdict.status != SKIP:
            self.kept.append((cand, verdict))
        k = self.settings.samples_per_shard
        if not self.retry and len(self.kept) == (len(self.jobs) + 1) * k:
            self._cut()
        self._record(wait=False)

    def _cut(self) -> None:
        k = self.settings.samples_per_shard
        part = self.kept[len(self.jobs) * k : (len(self.jobs) + 1) * k]
        job = plan_shard(self.name, self.dest, self.split_dir, index=len(self.jobs), part=part,
                         settings=self.settings, digits=self.digits)
        self.jobs.append(job)
        if (done := _finished(self.work, job, self.publisher)) is not None:
            self.pending.append((True, done))
        else:
            self.pending.append((False, self.pool.submit(_write_job, job) if self.pool else _write_job(job)))

    def _record(self, wait: bool) -> None:
        """Record the shards written so far, in order (all of them with `wait`)."""
        while len(self.files) < len(self.pending):
            before, p = self.pending[len(self.files)]
            if isinstance(p, Future) and not (wait or p.done()):
                return
            rec, job = result(p) if isinstance(p, Future) else p, self.jobs[len(self.files)]
            if not before:
                record = {"fingerprint": job.fingerprint(), "shard": asdict(rec)}
                write_atomic(_record_path(self.work, job), json.dumps(record).encode())
            if self.publisher is not None:  # recorded first: a kill during the upload finds it
                self.publisher.publish(rec, job.tar_path)
            self.files.append(rec)
            self.bar.update(rec.num_samples)

    def finish(self) -> list[ShardFile]:
        """Cut the last, partial shard; wait for every shard; their records in order."""
        if not self.retry and len(self.kept) > len(self.jobs) * self.settings.samples_per_shard:
            self._cut()
        self._record(wait=True)
        self.bar.close()
        return self.files


# -- the split as a whole -------------------------------------------------------------------


def _samples_tsv(kept: list[tuple[Candidate, Verdict]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
    w.writerow(SAMPLES_HEADER)
    w.writerows((i, c.label, c.path) for i, (c, _) in enumerate(kept))
    return buf.getvalue().encode("utf-8")


def _manifest(
    name: str, classes: list[str], settings: Settings, *, jobs: list[ShardJob], files: list[ShardFile],
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


def _check_settings(old: dict | None, settings: Settings, where: Path, *, what: str) -> None:
    """Refuse to mix runs made with different settings in one output folder."""
    if old is not None and old != asdict(settings):
        raise UserError(
            f"{where}: {what} was made with settings {old}, not {asdict(settings)}; "
            "rerun with the same settings, or remove it to start over"
        )


def _strict_check(name: str, cands: list[Candidate], verdicts: list[Verdict]) -> None:
    bad = [(c.path, v.detail) for c, v in zip(cands, verdicts) if v.status == SKIP]
    if bad:
        listed = "; ".join(f"{name}/{p} ({why})" for p, why in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise StrictError(f"--strict: {len(bad)} file(s) cannot be sharded: {listed}{more}. "
                          "No shard was written.")


def _retry_error(name: str, retry: list[tuple[Candidate, Verdict]], *, written: int) -> None:
    listed = "; ".join(f"{name}/{c.path} ({v.detail})" for c, v in retry[:5])
    more = f"; and {len(retry) - 5} more" if len(retry) > 5 else ""
    raise RetryError(f"{len(retry)} file(s) could not be read this time: {listed}{more}. The split is "
                     f"unfinished ({written} shards written, every other verdict kept): rerun the same "
                     "command to read them again")


def _already_complete(name: str, dest: Path, settings: Settings) -> Summary:
    """The summary of a finished split, once its files are checked (a stat and a header of each
    tar, samples.tsv against the manifest); refused if it was made with other settings."""
    m = read_manifest(dest / MANIFEST)
    _check_settings(m.get("settings"), settings, dest, what="the finished split")
    try:
        split = open_split(dest.parent, name)
        split.label_texts()
        problems = [p for i in range(len(split.shards)) if (p := split.tar_problem(i)) is not None]
    except ShardFormatError as e:
        problems = [str(e)]
    if problems:
        raise UserError(f"{dest}: the finished split is damaged ({'; '.join(problems[:2])}); check it with "
                        f"python -m shard.verify {dest.parent}, then remove {dest} and shard it again")
    log.info("%s: already complete (%s), nothing to do", name, dest / MANIFEST)
    size = sum(s["bytes"] for s in m["shards"])
    return Summary(name, m["num_samples"], len(m["shards"]), m["skipped"], m["repaired"], size, 0.0,
                   already_complete=True)


def _already_published(name: str, url: str, settings: Settings) -> Summary:
    """The summary of a split published to `url`, once its objects are checked against the
    manifest (one listing: every tar of its size, every index); refused if made with other settings."""
    raw = remote.read_bytes(remote.join(url, MANIFEST))
    m = read_manifest(remote.join(url, MANIFEST), raw)
    _check_settings(m.get("settings"), settings, url, what="the published split")
    there = remote.sizes(url)
    problems = [f"{s['tar']}: {there.get(s['tar'], 'no')} bytes, the manifest says {s['bytes']}"
                for s in m["shards"] if there.get(s["tar"]) != s["bytes"]]
    problems += [f"{s['idx']}: missing" for s in m["shards"] if s["idx"] not in there]
    if SAMPLES not in there:
        problems.append(f"{SAMPLES}: missing")
    if problems:
        raise UserError(f"{url}: the published split is damaged ({'; '.join(problems[:2])}); check it with "
                        f"python -m shard.verify, then remove {url} and shard it again")
    log.info("%s: already published (%s/%s), nothing to do", name, url, MANIFEST)
    return Summary(name, m["num_samples"], len(m["shards"]), m["skipped"], m["repaired"],
                   sum(s["bytes"] for s in m["shards"]), 0.0, already_complete=True)


def shard_split(
    name: str, split_dir: Path, out: Path, *, classes: list[str], settings: Settings,
    pool: ProcessPoolExecutor | None, strict: bool = False, listed: list[Candidate] | None = None,
    publish_to: str | None = None,
) -> Summary:
    """Validate and shard one split into `out/name`, resuming whatever an earlier run left.
    `listed` gives the samples of a multi-label list file instead of the class folders. With
    `publish_to` (a URL), `out` is the local stage and each shard is uploaded to
    `publish_to/name` as it is written, the manifest last (shard.publish)."""
    t0 = time.perf_counter()
    dest = out / name
    url = remote.join(publish_to, name) if publish_to else None
    if dest.is_symlink():
        raise UserError(f"{dest}: is a symbolic link; a split folder is written in OUT itself: remove the "
                        "link, or give another OUT")
    if url is not None and remote.exists(remote.join(url, MANIFEST)):
        return _already_published(name, url, settings)
    if url is None and (dest / MANIFEST).exists():
        return _already_complete(name, dest, settings)
    work = dest / WORK
    work.mkdir(parents=True, exist_ok=True)
    held = remote.RemoteLock(remote.join(url, ".lock"), f"split {url}") if url else nullcontext()
    with exclusive(work / "lock", f"split {dest}"), held:
        if url is not None and remote.exists(remote.join(url, MANIFEST)):  # finished meanwhile
            shutil.rmtree(dest)
            return _already_published(name, url, settings)
        if url is None and (dest / MANIFEST).exists():  # another run finished it while this one waited
            shutil.rmtree(work)
            return _already_complete(name, dest, settings)
        publisher = Publisher(url, dest) if url else None
        try:
            manifest, files = _build_split(name, split_dir, dest, work, classes=classes, settings=settings,
                                           pool=pool, strict=strict, listed=listed, publisher=publisher)
            if publisher is not None:
                publisher.commit(dest / SAMPLES, dest / MANIFEST)
        finally:
            if publisher is not None:
                publisher.close()
        shutil.rmtree(dest if url else work)  # under the lock: a run waiting for it finds the manifest
    return Summary(name, manifest["num_samples"], len(files), manifest["skipped"],
                   manifest["repaired"], sum(f.bytes for f in files), time.perf_counter() - t0)


def _build_split(name: str, split_dir: Path, dest: Path, work: Path, *, classes: list[str],
                 settings: Settings, pool: ProcessPoolExecutor | None, strict: bool,
                 listed: list[Candidate] | None, publisher: Publisher | None) -> tuple[dict, list[ShardFile]]:
    """Under the split's lock: verdicts, shards, then samples.tsv and the manifest, in `dest`."""
    previous = work / "settings.json"
    old = json.loads(previous.read_text())["settings"] if previous.exists() else None
    _check_settings(old, settings, dest, what="an unfinished run")
    write_atomic(previous, json.dumps({"settings": asdict(settings)}).encode())
    cands = listed if listed is not None else list_candidates(split_dir, classes)
    stream = verdicts(split_dir, cands, work, max_side=settings.max_side, pool=pool,
                      how=settings.validate)
    if strict:  # every verdict before any shard
        stream = list(stream)
        _strict_check(name, cands, stream)
    writer = ShardWriter(name, dest, split_dir, work=work, settings=settings, pool=pool,
                         candidates=len(cands), publisher=publisher)
    seen = []
    for c, v in zip(cands, stream, strict=True):  # strict: the stream ends, closing its journal
        seen.append(v)
        writer.add(c, v)
    files = writer.finish()
    if writer.retry:
        _retry_error(name, writer.retry, written=len(files))
    if not writer.kept:
        raise UserError(f"{split_dir}: none of its {len(cands)} files can be kept ({_reasons(seen)}); "
                        "nothing was sharded")
    manifest = _manifest(name, classes, settings, jobs=writer.jobs, files=files, cands=cands,
                         verdicts=seen)
    samples = _samples_tsv(writer.kept)
    manifest |= {"multilabel": listed is not None, "samples_sha256": hashlib.sha256(samples).hexdigest()}
    write_atomic(dest / SAMPLES, samples)
    write_atomic(dest / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest, files


def _category(reason: str) -> str:
    """A skip reason's kind: the words before its details ('truncated or corrupt')."""
    return re.split(r" \(|:", reason, maxsplit=1)[0]


def _reasons(verdicts: list[Verdict]) -> str:
    counted = Counter(_category(v.detail) for v in verdicts if v.status == SKIP)
    return ", ".join(f"{n} {why}" for why, n in counted.most_common())


def report(summaries: Iterable[Summary]) -> str:
    """One line per split, then the skip reasons counted."""
    lines, reasons = [], Counter()
    for s in summaries:
        state = " (already complete)" if s.already_complete else ""
        lines.append(
            f"{s.split}: {s.samples} samples in {s.shards} shards, {len(s.skipped)} skipped, "
            f"{len(s.repaired)} repaired, {s.bytes / 1e6:.1f} MB, {s.seconds:.1f} s{state}"
        )
        reasons.update(_category(k["reason"]) for k in s.skipped)
    if reasons:
        counted = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        lines.append(f"skipped files by reason: {counted} (listed in each manifest.json)")
    return "\n".join(lines)
