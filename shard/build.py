"""Turn one split folder into shards: validate every image, write shards, then the manifest.

Work happens in two resumable phases, both in one pool of worker processes:

1. validate (`shard.validate`): a verdict per file (keep, repair, skip), journaled.
2. write: kept samples get consecutive indices; shard i (samples [i*K, (i+1)*K)) is
   written by one worker under a temporary name and renamed into place, and only then is
   its record `OUT/S/.work/<tar>.json` written. A rerun skips shards whose record and tar
   agree with the plan.

samples.tsv and manifest.json are written last; the manifest's presence means the split
is complete, and `.work/` is removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from msnpipe.files import exclusive, write_atomic
from msnpipe.pool import ordered_map
from msnpipe.runtime import UserError
from shard import FORMAT
from shard.images import REPAIR, SKIP, Verdict, jpeg_payload
from shard.reader import MANIFEST, SAMPLES, SAMPLES_HEADER, read_manifest
from shard.scan import Candidate, list_candidates
from shard.validate import validate
from shard.writer import ShardFile, write_shard

log = logging.getLogger("shard")
WORK = ".work"


class StrictError(UserError):
    """--strict was given and some files would have been skipped."""


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
    return write_shard(job.tar_path, samples)


def plan_shards(
    name: str, out: Path, split_dir: Path, *, kept: list[tuple[Candidate, Verdict]], settings: Settings
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


def write_shards(jobs: list[ShardJob], work: Path, pool: ProcessPoolExecutor | None, *,
                 desc: str) -> list[ShardFile]:
    """Write every shard that is not already finished; return all records in order."""
    done = {i: rec for i, job in enumerate(jobs) if (rec := _finished(work, job)) is not None}
    if done:
        log.info("%s: %d of %d shards already written", desc, len(done), len(jobs))
    todo = [i for i in range(len(jobs)) if i not in done]
    total = sum(len(jobs[i].keys) for i in todo)
    with tqdm(total=total, desc=f"write {desc}", unit="img", smoothing=0.1) as bar:
        for i, rec in zip(todo, ordered_map(pool, _write_job, [jobs[i] for i in todo])):
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


def shard_split(
    name: str, split_dir: Path, out: Path, *, classes: list[str], settings: Settings,
    pool: ProcessPoolExecutor | None, strict: bool = False, listed: list[Candidate] | None = None,
) -> Summary:
    """Validate and shard one split into `out/name`, resuming whatever an earlier run left.
    `listed` gives the samples of a multi-label list file instead of the class folders."""
    t0 = time.perf_counter()
    dest = out / name
    if (dest / MANIFEST).exists():
        m = read_manifest(dest / MANIFEST)
        _check_settings(m.get("settings"), settings, dest, what="the finished split")
        log.info("%s: already complete (%s), nothing to do", name, dest / MANIFEST)
        size = sum(s["bytes"] for s in m["shards"])
        return Summary(name, m["num_samples"], len(m["shards"]), m["skipped"], m["repaired"],
                       size, time.perf_counter() - t0, already_complete=True)
    work = dest / WORK
    work.mkdir(parents=True, exist_ok=True)
    with exclusive(work / "lock", f"split {dest}"):
        previous = work / "settings.json"
        old = json.loads(previous.read_text())["settings"] if previous.exists() else None
        _check_settings(old, settings, dest, what="an unfinished run")
        write_atomic(previous, json.dumps({"settings": asdict(settings)}).encode())
        cands = listed if listed is not None else list_candidates(split_dir, classes)
        verdicts = validate(split_dir, cands, work, max_side=settings.max_side, pool=pool,
                            how=settings.validate)
        if strict:
            _strict_check(name, cands, verdicts)
        kept = [(c, v) for c, v in zip(cands, verdicts) if v.status != SKIP]
        jobs = plan_shards(name, dest, split_dir, kept=kept, settings=settings)
        files = write_shards(jobs, work, pool, desc=name)
        manifest = _manifest(name, classes, settings, jobs=jobs, files=files, cands=cands, verdicts=verdicts)
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
