"""The embedding run: shards -> decoded batches -> one or more ViTs -> Zarr rows.

    from embed.run import Config, run
    run(Config(shards=Path("out/shards"), split="val", encoders=("vits16_800ep",),
               weights="weights/", out=Path("out/embeddings.zarr")))

Rank 0 (of a torchrun job, or the only process) holds each group's writer lock, creates
missing groups atomically and refuses mismatched ones. The shards not yet done are then dealt
across the ranks (`deal`); each rank writes a shard's rows as soon as all of them have
arrived and marks it done. Rank 0 marks the group complete once every shard is done. A killed
run, started again with any number of processes, does only what is missing.

Before anything is made, the decoder is resolved (`--decoder auto`: the one that can run here)
and every tar is checked against the manifest (size, first header); each shard's sha256 is
checked before its rows are written. A sample no decoder can read ends the run in one line
naming its shard, key and source path; the shards finished before it stay done.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from embed import store
from embed.assemble import ShardAssembler
from embed.batch import DecodeError
from embed.checkpoint import load_encoder, resolve_weights
from embed.encoders import EncoderSpec, get_spec
from embed.pipeline import Tuning, batches, fidelity, resolve
from embed.runner import EncoderRunner, HostRows, auto_batch
from embed.source import CheckedShards, refuse_changed
from embed.views import Views
from msnpipe.runtime import UserError, pick_device
from shard.reader import Split, open_split

log = logging.getLogger("embed")
CPU_BATCH = 16  # measured: on CPUs, larger batches run slower per image (cache)
BARRIER_TIMEOUT = datetime.timedelta(days=7)  # a rank may wait long for the slowest one


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting of one `python -m embed` run (see __main__ for the options)."""

    shards: Path
    split: str
    encoders: tuple[str, ...]
    weights: str
    out: Path
    kind: str = "cls_prenorm"      # cls_prenorm | cls | mean
    precision: str = "auto"        # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool | None = None    # None: on CUDA only
    batch_size: int | None = None  # None: largest that fits on CUDA, 16 on the CPU
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    check_drift: int = 0           # embed the first K images also in fp32 eager
    dtype: str = "float32"         # float32 | float16 rows
    views: int = 0                 # K augmented views per image (0: none), stored as `views`
    augment: str = "msn"           # msn | simclr | none (see embed.views)
    view_seed: int = 0
    decoder: str = "auto"          # auto | nvimgcodec | dali | torchvision | torchvision-cpu (embed.pipeline)
    hw_share: float | None = None  # the hardware JPEG engines' share of a batch (None: the library's)
    cpu_share: float = 0.0         # nvimgcodec on a GPU: the share of a batch decoded on CPU threads
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def from_rank0(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def init_dist() -> Dist:
    """Join the torchrun job described by the environment, if any. Ranks only coordinate
    (barriers, small objects), so gloo serves on every device, with a timeout long enough
    for a rank with little work to wait for the others."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return Dist(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def versions() -> dict:
    """Versions of what shapes the numbers (DALI's and nvImageCodec's only where installed)."""
    from importlib.metadata import PackageNotFoundError, distributions, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "timm", "zarr", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    for prefix in ("nvidia-dali", "nvidia-nvimgcodec"):
        found = [d for d in distributions() if (d.metadata["Name"] or "").startswith(prefix)]
        if found:
            out[prefix] = found[0].version
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


@dataclass
class Target:
    """One encoder being embedded: its runner, its store group, and its shard assembler."""

    spec: EncoderSpec
    runner: EncoderRunner
    group: object  # zarr.Group
    assembler: ShardAssembler
    info: dict
    identity: dict


@dataclass
class Pending:
    """One batch's rows of one target on their way to the host."""

    target: Target
    rows: HostRows
    views: HostRows | None
    indices: np.ndarray

    def land(self) -> None:
        self.target.assembler.add(self.rows.numpy(), self.indices,
                                  self.views.numpy() if self.views is not None else None)


def _identity(spec: EncoderSpec, split: Split, cfg: Config, *, weights_info: dict, precision: str) -> dict:
    """What a store group must have been built from to be resumed (JSON-normalised)."""
    return json.loads(json.dumps({
        "encoder": spec.name, "shards_manifest_sha256": split.manifest_sha256,
        "weights_sha256": weights_info["weights_sha256"] or "random", "kind": cfg.kind,
        "preprocessing": asdict(spec.preprocess), "decoder": cfg.decoder, "precision": precision,
        "dtype": cfg.dtype,
        "num_samples": split.num_samples,
        "views": {"k": cfg.views, "augment": cfg.augment, "seed": cfg.view_seed} if cfg.views else None,
    }))


def _attrs(t: Target, cfg: Config, *, split: Split) -> dict:
    """What the group was made from (the same on every run)."""
    return {
        "encoder": t.spec.name, "architecture": t.spec.arch, "spec": t.spec.describe(), "kind": cfg.kind,
        "weights": t.info["weights"], "weights_sha256": t.info["weights_sha256"],
        "random_weights": t.info["random_weights"], "preprocessing": t.identity["preprocessing"],
        "precision": t.identity["precision"], "shards": str(split.dir),
        "shards_manifest_sha256": split.manifest_sha256, "num_shards": len(split.shards),
        "skipped_files": len(split.skipped), "classes": split.classes, "identity": t.identity,
    }


def record_run(group, *, device: torch.device, batch: int, dist: Dist, cfg: Config) -> None:
    """Append this run to the group's `runs` (a group resumed on another machine keeps both): where
    it ran, and which decoder with which settings, how far its pixels lie from libjpeg-turbo's on
    a GPU (embed.pipeline.fidelity); the top-level device, batch_size and versions stay the first
    run's."""
    done = int(store.done_shards(group).sum())
    decoder = {"name": cfg.decoder, "threads": decode_threads(cfg, device), "hw_share": cfg.hw_share,
               "cpu_share": cfg.cpu_share}
    if device.type == "cuda":
        decoder["grey_levels_from_libjpeg"] = round(fidelity(cfg.decoder, device), 4)
    run = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
           "device": device_name(device), "batch_size": batch, "world": dist.world, "versions": versions(),
           "shards_done_before": done, "decoder": decoder}
    attrs = group.attrs.asdict()
    first = {k: run[k] for k in ("device", "batch_size", "versions") if k not in attrs}
    group.attrs.update(first | {"runs": attrs.get("runs", []) + [run]})


def ensure_group(cfg: Config, name: str, split: Split, *, identity: dict) -> None:
    """Rank 0, holding the writer lock: create the group if absent (or half-made by an older
    version), else refuse it unless it was built from the same inputs and settings."""
    group = store.open_group(cfg.out, name, split.name, mode="a")
    half_made = group is not None and not store.is_whole(group)
    if group is not None and not half_made:
        if diff := store.identity_mismatch(group, identity):
            raise store.StoreError(f"{cfg.out}/{name}/{split.name} was built from other inputs or "
                                   f"settings ({'; '.join(diff)}); use another --out or remove it")
        return
    if half_made:
        log.warning("%s/%s/%s was left half-made by an interrupted run; creating it again",
                    cfg.out, name, split.name)
    layout = store.Layout(split.num_samples, get_spec(name).dim, split.samples_per_shard,
                          len(split.shards), cfg.dtype, cfg.views,
                          len(split.classes) if split.multilabel else 0)
    store.create_group(cfg.out, name, split.name, layout=layout, attrs={"identity": identity},
                       overwrite=half_made)


def prepare_targets(cfg: Config, split: Split, device: torch.device, *, precision: str, dist: Dist,
                    locks: ExitStack, shards: CheckedShards) -> list[Target]:
    """Load every encoder; rank 0 locks and creates or checks its group; all ranks open it."""
    labels, paths = split.labels(), split.paths()  # samples.tsv checked before anything is made
    loaded = []
    for name in cfg.encoders:
        spec = get_spec(name)
        model, info = load_encoder(spec, resolve_weights(cfg.weights, name, several=len(cfg.encoders) > 1))
        loaded.append((spec, model, info, _identity(spec, split, cfg, weights_info=info,
                                                    precision=precision)))
    error = None
    if dist.rank == 0:
        try:
            for spec, _, _, identity in loaded:
                locks.enter_context(store.writer_lock(cfg.out, spec.name, split.name))
                ensure_group(cfg, spec.name, split, identity=identity)
        except UserError as e:
            error = e
    message = dist.from_rank0(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:  # rank 0 refused: every rank stops with its reason
        raise UserError(message)
    targets, k = [], split.samples_per_shard
    for spec, model, info, identity in loaded:
        group = store.open_group(cfg.out, spec.name, split.name, mode="a")

        def write(s: int, rows: np.ndarray, views: np.ndarray | None, *, group=group) -> None:
            shards.verified(s)  # the tar's bytes are the manifest's, or nothing of it is written
            lo, hi = s * k, s * k + len(rows)
            store.write_shard(group, s, lo, rows=rows, labels=labels[lo:hi], paths=paths[lo:hi], views=views)

        use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
        runner = EncoderRunner(spec, model, kind=cfg.kind, device=device, precision=precision,
                               compile=use_compile, drift_images=cfg.check_drift)
        targets.append(Target(spec, runner, group, ShardAssembler(split, store.done_shards(group), write),
                              info, identity))
    return targets


def recorded_decoder(cfg: Config, split: str) -> str | None:
    """The decoder the groups `cfg` would resume were built with (when they agree), so that
    `--decoder auto` resumes a group on a machine where it would pick another."""
    found = set()
    for name in cfg.encoders:
        group = store.open_group(cfg.out, name, split, mode="r")
        if group is not None and store.is_whole(group):
            found.add((group.attrs.asdict().get("identity") or {}).get("decoder"))
    return found.pop() if len(found) == 1 else None


def deal(done: list[np.ndarray], dist: Dist) -> list[int]:
    """This rank's shards: those some target has not done, dealt round-robin over the ranks, so
    a resumed job spreads what is left evenly whatever was finished before."""
    todo = [i for i in range(len(done[0])) if not all(d[i] for d in done)]
    return todo[dist.rank :: dist.world]


def _submit(t: Target, b, real: int) -> Pending:
    """Queue one batch's forward passes (rows, and views [B, K, D]) and their copies to the host."""
    keep = len(b.indices) if t.runner.compiled else real  # a compiled graph wants the full batch
    rows = t.runner.forward(b.images[:keep])  # [B, D]
    t.runner.measure_drift(b.images[:keep], rows, real)
    views = torch.stack([t.runner.forward(v[:keep]) for v in b.views], 1) if b.views else None
    return Pending(t, HostRows(rows), HostRows(views) if views is not None else None, b.indices[:keep])


def decode_threads(cfg: Config, device: torch.device) -> int:
    """The decoder's CPU threads: every core beside a GPU; half of them beside a CPU model."""
    return max(1, cfg.threads if device.type == "cuda" else cfg.threads // 2)


class Clock:
    """Where a run's seconds go. Past the first batch (compile, warm-up: `first_s`), on CUDA
    `compute_s` is the GPU's own time from each batch's first forward launch to its last kernel
    (CUDA events, read at the end) and `wait_s` the rest of the wall time (the model's stream
    idle, waiting for data); on the CPU both are wall-clock. `steady_s` runs from the end of the
    first batch (device synchronized) until the last rows are in the store."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.start = self.mark = time.perf_counter()
        self.first_s: float | None = None
        self.first_images = 0
        self.wait = self.compute = 0.0  # CPU: wall-clock sums
        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def begin(self) -> torch.cuda.Event | None:
        """A batch has arrived; its forward passes are about to be queued."""
        now = time.perf_counter()
        if self.first_s is not None:
            self.wait += now - self.mark
        self.mark = now
        if self.cuda and self.first_s is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return None

    def end(self, started: torch.cuda.Event | None, images: int) -> None:
        """The batch's forward passes are queued (and the batch before has landed)."""
        now = time.perf_counter()
        if self.first_s is None:  # the first batch: compile and warm-up, kept apart
            if self.cuda:
                torch.cuda.synchronize(self.device)
                now = time.perf_counter()
            self.first_s, self.first_images = now - self.start, images
        else:
            self.compute += now - self.mark
            if started is not None:
                done = torch.cuda.Event(enable_timing=True)
                done.record()
                self.spans.append((started, done))
        self.mark = now

    def stats(self, images: int) -> dict:
        """Once the last rows are in the store."""
        now = time.perf_counter()
        first = self.first_s if self.first_s is not None else now - self.start
        steady = now - self.start - first
        compute = self.compute
        if self.cuda:
            torch.cuda.synchronize(self.device)
            compute = sum(a.elapsed_time(b) for a, b in self.spans) / 1000
        return {"images": images, "wall_s": now - self.start, "first_batch_s": first,
                "first_batch_images": self.first_images, "steady_s": steady,
                "steady_images": images - self.first_images, "compute_s": compute,
                "wait_s": max(0.0, steady - compute)}


def _loop(targets: list[Target], split: Split, shard_ids: list[int], *, cfg: Config,
          device: torch.device, batch: int, show: bool) -> dict:
    """Embed every sample of `shard_ids` with every target; return timings (Clock.stats)."""
    order = np.concatenate([np.arange(0)] + [np.array(split.shard_range(i)) for i in shard_ids])
    views = Views(cfg.views, cfg.augment, cfg.view_seed) if cfg.views else None
    tars, idxs = split.tar_paths(), split.idx_paths()
    stream = batches(cfg.decoder, [tars[i] for i in shard_ids], [idxs[i] for i in shard_ids], order=order,
                     pre=targets[0].spec.preprocess, batch_size=batch, device=device,
                     threads=decode_threads(cfg, device), views=views,
                     tuning=Tuning(cfg.hw_share, cfg.cpu_share))
    bar = tqdm(total=len(order), desc=f"embed {split.name}", unit="img", disable=not show, smoothing=0.05)
    clock = Clock(device)
    previous: list[Pending] = []
    try:
        for b in stream:
            started = clock.begin()
            real = int((b.indices >= 0).sum())
            submitted = [_submit(target, b, real) for target in targets]
            for p in previous:  # the batch before: its copies had a whole forward pass to land
                p.land()
            previous = submitted
            clock.end(started, real)
            bar.update(real)
    except DecodeError as e:
        for p in previous:  # what was computed before the failure is written, whole shards marked done
            p.land()
        raise undecodable(e, split, cfg, targets=targets) from None
    finally:
        bar.close()
    for p in previous:
        p.land()
    return clock.stats(len(order))


def undecodable(e: DecodeError, split: Split, cfg: Config, *, targets: list[Target]) -> UserError:
    """The one line for a sample the decoder cannot read: its shard, key and source path, and what
    stays done."""
    s = e.index // split.samples_per_shard
    done = int(sum(store.done_shards(targets[0].group))) if targets else 0
    return UserError(
        f"{split.tar_paths()[s]}: sample {split.key(e.index)} ({split.paths()[e.index]}): {e.decoder} cannot "
        f"decode it ({e.message}). {done} of {len(split.shards)} shards are done and stay done. "
        f"`python -m shard.verify {cfg.shards} --splits {split.name} --decode` lists every such sample; "
        f"shard the split again with this version, which re-encodes what not every decoder reads")


def _runtime(cfg: Config) -> tuple[Dist, torch.device, str]:
    """Join the job, pick this rank's device and threads; the precision it implies."""
    dist = init_dist()
    device = pick_device(cfg.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, cfg.threads // (dist.world if device.type == "cpu" else 1)))
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return dist, device, precision


def _finish(targets: list[Target], dist: Dist) -> bool | None:
    """Check every shard was whole; rank 0 records drift and marks complete groups."""
    for t in targets:
        if t.assembler.unfinished():
            raise RuntimeError(f"{t.spec.name}: shards {t.assembler.unfinished()} were read incompletely")
        if (drift := t.runner.drift()) and dist.rank == 0:
            t.group.attrs.update({"drift": drift})
    dist.barrier()
    # only rank 0 checks and marks completion; other ranks do not know it
    return all([store.mark_complete_if_done(t.group) for t in targets]) if dist.rank == 0 else None


def run(cfg: Config) -> dict:
    """Embed one split with every encoder of `cfg`; return a summary."""
    dist, device, precision = _runtime(cfg)
    split = open_split(cfg.shards, cfg.split)
    decoder = resolve(cfg.decoder, device, views=cfg.views > 0, recorded=recorded_decoder(cfg, split.name))
    cfg = dataclasses.replace(cfg, decoder=decoder)
    if split.num_samples == 0:
        raise UserError(f"{split.dir}: the split holds no sample (every file was skipped); nothing to embed")
    refuse_changed(split)
    with ExitStack() as locks:
        shards = CheckedShards(split)
        locks.callback(shards.close)
        targets = prepare_targets(cfg, split, device, precision=precision, dist=dist, locks=locks,
                                  shards=shards)
        runners = [t.runner for t in targets]
        batch = cfg.batch_size or (auto_batch(runners, device, cfg.views, drift=cfg.check_drift > 0)
                                   if device.type == "cuda" else CPU_BATCH)
        if dist.rank == 0:
            for t in targets:
                t.group.attrs.update(_attrs(t, cfg, split=split))
                record_run(t.group, device=device, batch=batch, dist=dist, cfg=cfg)
        dist.barrier()
        mine = deal([store.done_shards(t.group) for t in targets], dist)
        shards.start(mine)
        log.info("rank %d/%d: %d shards to embed on %s, batch %d, %s, compile %s, decoder %s", dist.rank,
                 dist.world, len(mine), device_name(device), batch, precision, targets[0].runner.compiled,
                 cfg.decoder)
        stats = _loop(targets, split, mine, cfg=cfg, device=device, batch=batch, show=dist.rank == 0)
        complete = _finish(targets, dist)
    return stats | {"rank": dist.rank, "world": dist.world, "batch": batch, "device": str(device),
                    "precision": precision, "complete": complete}
