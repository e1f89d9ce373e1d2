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
import logging
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from embed import store
from embed.assemble import ShardAssembler
from embed.batch import DecodeError
from embed.checkpoint import load_encoder, resolve_weights
from embed.clock import Clock
from embed.config import Config
from embed.dist import Dist, deal, init_dist
from embed.encoders import EncoderSpec, get_spec
from embed.group import device_name, ensure_group, group_attrs, group_identity, record_run, recorded_decoder
from embed.pipeline import Tuning, batches, resolve
from embed.runner import EncoderRunner, HostRows, auto_batch
from embed.source import CheckedShards, RemoteShards, refuse_changed, shards_of
from embed.views import ViewRecipe
from msnpipe.runtime import UserError, pick_device
from shard.reader import Split, open_split, shard_of

__all__ = ["Config", "run"]

log = logging.getLogger("embed")
CPU_BATCH = 16  # measured: on CPUs, larger batches run slower per image (cache)


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


def prepare_targets(cfg: Config, split: Split, device: torch.device, *, precision: str, dist: Dist,
                    locks: ExitStack, shards: CheckedShards | RemoteShards) -> list[Target]:
    """Load every encoder; rank 0 locks and creates or checks its group; all ranks open it."""
    labels, paths = split.labels(), split.paths()  # samples.tsv checked before anything is made
    loaded = []
    for name in cfg.encoders:
        spec = get_spec(name)
        model, info = load_encoder(spec, resolve_weights(cfg.weights, name, several=len(cfg.encoders) > 1))
        loaded.append((spec, model, info, group_identity(spec, split, cfg, weights_info=info,
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
    targets = []
    for spec, model, info, identity in loaded:
        group = store.open_group(cfg.out, spec.name, split.name, mode="a")

        def write(s: int, rows: np.ndarray, views: np.ndarray | None, *, group=group) -> None:
            shards.verified(s)  # the tar's bytes are the manifest's, or nothing of it is written
            span = split.shard_range(s)
            lo, hi = span.start, span.stop
            store.write_shard(group, s, lo, rows=rows, labels=labels[lo:hi], paths=paths[lo:hi], views=views)

        use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
        runner = EncoderRunner(spec, model, kind=cfg.kind, device=device, precision=precision,
                               compile=use_compile, drift_images=cfg.check_drift)
        targets.append(Target(spec, runner, group, ShardAssembler(split, store.done_shards(group), write),
                              info, identity))
    return targets


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


def _order(split: Split, shard_ids: list[int]) -> np.ndarray:
    return np.concatenate([np.arange(0)] + [np.array(split.shard_range(i)) for i in shard_ids])


def _batches(split: Split, group: list[int], *, cfg: Config, pre, device: torch.device, batch: int):
    """Every sample of the shards of `group` (their tars on this machine), in batches."""
    views = ViewRecipe(cfg.views, cfg.augment, cfg.view_seed) if cfg.views else None
    tars, idxs = split.tar_paths(), split.idx_paths()
    return batches(cfg.decoder, [tars[i] for i in group], [idxs[i] for i in group],
                   order=_order(split, group), pre=pre, batch_size=batch, device=device,
                   threads=decode_threads(cfg, device), views=views,
                   tuning=Tuning(cfg.hw_share, cfg.cpu_share))


def _loop(targets: list[Target], split: Split, shard_ids: list[int], *, cfg: Config, shards,
          device: torch.device, batch: int, show: bool) -> dict:
    """Embed every sample of `shard_ids` with every target, group by group of shards on this
    machine (all at once for a local split); return timings (Clock.stats)."""
    total = len(_order(split, shard_ids))
    stream = (b for group in shards.groups(shard_ids)
              for b in _batches(split, group, cfg=cfg, pre=targets[0].spec.preprocess, device=device,
                                batch=batch))
    bar = tqdm(total=total, desc=f"embed {split.name}", unit="img", disable=not show, smoothing=0.05)
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
    return clock.stats(total)


def undecodable(e: DecodeError, split: Split, cfg: Config, *, targets: list[Target]) -> UserError:
    """The one line for a sample the decoder cannot read: its shard, key and source path, and what
    stays done."""
    s, _ = shard_of(e.index, split.samples_per_shard)
    done = int(sum(store.done_shards(targets[0].group))) if targets else 0
    return UserError(
        f"{split.where(s)}: sample {split.key(e.index)} ({split.paths()[e.index]}): {e.decoder} cannot "
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
    split = open_split(cfg.shards, cfg.split, cache=cfg.cache)
    decoder = resolve(cfg.decoder, device, views=cfg.views > 0, recorded=recorded_decoder(cfg, split.name))
    cfg = dataclasses.replace(cfg, decoder=decoder)
    if split.num_samples == 0:
        raise UserError(f"{split.dir}: the split holds no sample (every file was skipped); nothing to embed")
    refuse_changed(split)
    with ExitStack() as locks:
        shards = shards_of(split, cache_bytes=int(cfg.cache_gb * 2**30))
        locks.callback(shards.close)
        targets = prepare_targets(cfg, split, device, precision=precision, dist=dist, locks=locks,
                                  shards=shards)
        runners = [t.runner for t in targets]
        batch = cfg.batch_size or (auto_batch(runners, device, cfg.views, drift=cfg.check_drift > 0)
                                   if device.type == "cuda" else CPU_BATCH)
        if dist.rank == 0:
            for t in targets:
                t.group.attrs.update(group_attrs(t.spec, cfg, split=split, info=t.info, identity=t.identity))
                record_run(t.group, device=device, batch=batch, world=dist.world, cfg=cfg,
                           threads=decode_threads(cfg, device))
        dist.barrier()
        mine = deal([store.done_shards(t.group) for t in targets], dist)
        shards.start(mine)
        log.info("rank %d/%d: %d shards to embed on %s, batch %d, %s, compile %s, decoder %s", dist.rank,
                 dist.world, len(mine), device_name(device), batch, precision, targets[0].runner.compiled,
                 cfg.decoder)
        stats = _loop(targets, split, mine, cfg=cfg, shards=shards, device=device, batch=batch,
                      show=dist.rank == 0)
        complete = _finish(targets, dist)
    return stats | {"rank": dist.rank, "world": dist.world, "batch": batch, "device": str(device),
                    "precision": precision, "complete": complete}
