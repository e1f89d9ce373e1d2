"""The embedding loop: shards -> DALI batches -> one or more compiled ViTs -> Zarr rows.

A rank (one process of a torchrun job, or the only process) owns shards i with
i % world_size == rank, skips those already marked done, and writes each shard's rows
as soon as all of them have arrived, then marks the shard done. Rank 0 marks the group
complete once every shard is done. A killed run, started again, does only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from embed import store
from embed.checkpoint import load_encoder, resolve_weights
from embed.encoders import Embedder, EncoderSpec, get_spec
from embed.pipeline import Views, batches
from shard.reader import Split, open_split

log = logging.getLogger("embed")
AUTO_BATCHES = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
CPU_BATCH = 16  # measured: on CPUs, larger batches run slower per image (cache)


@dataclass(frozen=True)
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


def init_dist(device_kind: str) -> Dist:
    """Join the torchrun job described by the environment, if any (nccl on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int) -> torch.device:
    """`auto` is this rank's GPU when CUDA is there, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def versions() -> dict:
    """Versions of what shapes the numbers."""
    import nvidia.dali
    import timm
    import zarr

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "nvidia-dali": nvidia.dali.__version__, "zarr": zarr.__version__, "numpy": np.__version__}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


class Target:
    """One encoder being embedded: its model, its store group, and rows not yet written."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, group, split: Split,
                 cfg: Config, device: torch.device, precision: str):
        self.spec, self.group, self.split = spec, group, split
        self.device, self.precision = device, precision
        self.eager = Embedder(model, cfg.kind).to(device).eval()
        use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
        self.compiled = use_compile
        self.model = torch.compile(self.eager, dynamic=False) if use_compile else self.eager
        self.chunk = 1 << 30  # micro-batch size; halves on CUDA out-of-memory
        self.pending: dict[int, np.ndarray] = {}  # shard -> rows [n, D]
        self.pending_views: dict[int, np.ndarray] = {}  # shard -> rows [n, K, D]
        self.filled: dict[int, int] = {}
        self.drift_left, self.drift_cos = cfg.check_drift, []
        self.done = store.done_shards(group)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] -> [B, D] float32 on the model's device."""
        while True:
            try:
                with autocast(self.device, self.precision):
                    return torch.cat([self.model(c) for c in x.split(self.chunk)]).float()
            except torch.cuda.OutOfMemoryError:
                if min(self.chunk, len(x)) == 1:
                    raise
                self.chunk = max(1, min(self.chunk, len(x)) // 2)
                torch.cuda.empty_cache()
                log.warning("%s: out of memory; micro-batches of %d", self.spec.name, self.chunk)

    @torch.inference_mode()
    def drift(self, x: torch.Tensor, rows: torch.Tensor, real: int) -> None:
        """Cosine between these rows and fp32 eager rows, for the first K images."""
        take = min(self.drift_left, real)
        if take <= 0:
            return
        ref = self.eager(x[:take].float())
        self.drift_cos += torch.nn.functional.cosine_similarity(rows[:take], ref, dim=1).tolist()
        self.drift_left -= take

    def consume(self, rows: np.ndarray, indices: np.ndarray, views: np.ndarray | None = None) -> None:
        """Buffer rows [B, D] (and views [B, K, D]) by sample index; write each shard made whole."""
        k = self.split.samples_per_shard
        for j, index in enumerate(indices):
            if index < 0:
                continue  # padding
            s = int(index) // k
            if self.done[s]:
                continue
            n = self.split.shards[s].num_samples
            buf = self.pending.setdefault(s, np.empty((n, rows.shape[1]), dtype=np.float32))
            buf[index - s * k] = rows[j]
            if views is not None:
                vbuf = self.pending_views.setdefault(s, np.empty((n, *views.shape[1:]), np.float32))
                vbuf[index - s * k] = views[j]
            self.filled[s] = self.filled.get(s, 0) + 1
            if self.filled[s] == n:
                store.write_rows(self.group, s, s * k, self.pending.pop(s), self.pending_views.pop(s, None))
                del self.filled[s]
                self.done[s] = True


def _auto_batch(target: Target, device: torch.device) -> int:
    """The largest batch in AUTO_BATCHES whose forward fits on the GPU."""
    for b in AUTO_BATCHES:
        try:
            x = torch.zeros(b, 3, 224, 224, device=device)
            with torch.inference_mode(), autocast(device, target.precision):
                target.eager(x)
            del x
            torch.cuda.empty_cache()
            return b
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    raise RuntimeError(f"{target.spec.name}: not even a batch of 1 fits on {device}")


def _identity(spec: EncoderSpec, split: Split, cfg: Config, weights_info: dict, precision: str) -> dict:
    """What a store group must have been built from to be resumed (JSON-normalised)."""
    return json.loads(json.dumps({
        "encoder": spec.name, "shards_manifest_sha256": split.manifest_sha256,
        "weights_sha256": weights_info["weights_sha256"] or "random", "kind": cfg.kind,
        "preprocessing": asdict(spec.preprocess), "precision": precision, "dtype": cfg.dtype,
        "num_samples": split.num_samples,
        "views": {"k": cfg.views, "augment": cfg.augment, "seed": cfg.view_seed} if cfg.views else None,
    }))


def _attrs(spec: EncoderSpec, cfg: Config, info: dict, identity: dict, device: torch.device,
           batch: int, split: Split) -> dict:
    return {
        "encoder": spec.name, "architecture": spec.arch, "spec": spec.describe(), "kind": cfg.kind,
        "weights": info["weights"], "weights_sha256": info["weights_sha256"],
        "random_weights": info["random_weights"], "preprocessing": identity["preprocessing"],
        "precision": identity["precision"], "device": device_name(device), "batch_size": batch,
        "versions": versions(), "shards": str(split.dir), "shards_manifest_sha256": split.manifest_sha256,
        "num_shards": len(split.shards), "classes": split.classes, "identity": identity,
    }


def prepare_target(name: str, cfg: Config, split: Split, device: torch.device, precision: str,
                   dist: Dist) -> tuple[Target, dict, dict]:
    """Load one encoder and open (rank 0: create) its group, refusing a mismatched one."""
    spec = get_spec(name)
    weights = resolve_weights(cfg.weights, name, several=len(cfg.encoders) > 1)
    model, info = load_encoder(spec, weights)
    identity = _identity(spec, split, cfg, info, precision)
    group = store.open_group(cfg.out, name, split.name, mode="a")
    if group is not None and (diff := store.identity_mismatch(group, identity)):
        raise store.StoreError(f"{cfg.out}/{name}/{split.name} was built from other inputs or "
                               f"settings ({'; '.join(diff)}); use another --out or remove it")
    if group is None and dist.rank == 0:
        layout = store.Layout(split.num_samples, spec.dim, split.samples_per_shard,
                              len(split.shards), cfg.dtype, cfg.views)
        group = store.create_group(cfg.out, name, split.name, layout, split.labels(),
                                   split.paths(), {"identity": identity})
    dist.barrier()
    group = store.open_group(cfg.out, name, split.name, mode="a")
    return Target(spec, model, group, split, cfg, device, precision), info, identity


class HostRows:
    """Rows on their way to the host. On CUDA the copy goes to pinned memory without blocking
    and is waited for only when the rows are needed, one batch later, so the GPU already has
    the next batch's forward queued while the host writes; on the CPU it is the tensor itself."""

    def __init__(self, rows: torch.Tensor):
        if rows.device.type != "cuda":
            self.host, self.event = rows, None
            return
        self.host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        self.host.copy_(rows, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def numpy(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def _submit(target: Target, b, real: int) -> tuple[Target, HostRows, HostRows | None, np.ndarray]:
    """Queue one batch's forward passes (rows, and views [B, K, D]) and their copies to the host."""
    # a compiled graph wants the padded fixed-size batch; eager skips the padding
    keep = len(b.indices) if target.compiled else real
    rows = target.forward(b.images[:keep])  # [B, D]
    target.drift(b.images[:keep], rows, real)
    views = torch.stack([target.forward(v[:keep]) for v in b.views], 1) if b.views else None
    return target, HostRows(rows), (HostRows(views) if views is not None else None), b.indices[:keep]


def _finish(submitted: list[tuple]) -> None:
    for target, rows, views, indices in submitted:
        target.consume(rows.numpy(), indices, views.numpy() if views is not None else None)


def _loop(targets: list[Target], split: Split, shard_ids: list[int], cfg: Config,
          device: torch.device, batch: int, show: bool) -> dict:
    """Embed every sample of `shard_ids` with every target; return timings."""
    order = np.concatenate([np.arange(0)] + [np.array(split.shard_range(i)) for i in shard_ids])
    n = len(order)
    dali_threads = max(1, min(8, cfg.threads if device.type == "cuda" else cfg.threads // 2))
    views = Views(cfg.views, cfg.augment, cfg.view_seed) if cfg.views else None
    tars, idxs = split.tar_paths(), split.idx_paths()
    stream = batches([tars[i] for i in shard_ids], [idxs[i] for i in shard_ids], order,
                     targets[0].spec.preprocess, batch, device, dali_threads, views)
    wait = compute = 0.0
    bar = tqdm(total=n, desc=f"embed {split.name}", unit="img", disable=not show, smoothing=0.05)
    t = time.perf_counter()
    previous: list[tuple] = []
    for b in stream:
        t1 = time.perf_counter()
        real = int((b.indices >= 0).sum())
        submitted = [_submit(target, b, real) for target in targets]
        _finish(previous)  # the batch before: its copies had a whole forward pass to land
        previous = submitted
        t2 = time.perf_counter()
        wait, compute, t = wait + (t1 - t), compute + (t2 - t1), t2
        bar.update(real)
    _finish(previous)
    bar.close()
    return {"images": n, "wait_s": wait, "compute_s": compute}


def run(cfg: Config) -> dict:
    """Embed one split with every encoder of `cfg`; return a summary."""
    dist = init_dist("cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = pick_device(cfg.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, cfg.threads // (dist.world if device.type == "cpu" else 1)))
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    split = open_split(cfg.shards, cfg.split)
    prepared = [prepare_target(name, cfg, split, device, precision, dist) for name in cfg.encoders]
    targets = [t for t, _, _ in prepared]
    batch = cfg.batch_size or (_auto_batch(targets[-1], device) if device.type == "cuda" else CPU_BATCH)
    if dist.rank == 0:
        for (t, info, identity) in prepared:
            t.group.attrs.update(_attrs(t.spec, cfg, info, identity, device, batch, split))
    mine = [i for i in range(len(split.shards))
            if i % dist.world == dist.rank and not all(t.done[i] for t in targets)]
    log.info("rank %d/%d: %d shards to embed on %s, batch %d, %s, compile %s", dist.rank, dist.world,
             len(mine), device_name(device), batch, precision, targets[0].compiled)
    stats = _loop(targets, split, mine, cfg, device, batch, show=dist.rank == 0)
    for t in targets:
        if t.pending:
            raise RuntimeError(f"{t.spec.name}: shards {sorted(t.pending)} were read incompletely")
        if t.drift_cos and dist.rank == 0:
            t.group.attrs.update({"drift": {"images": len(t.drift_cos), "min_cos": min(t.drift_cos),
                                            "mean_cos": float(np.mean(t.drift_cos))}})
    dist.barrier()
    # only rank 0 checks and marks completion; other ranks do not know it
    complete = all([store.mark_complete_if_done(t.group) for t in targets]) if dist.rank == 0 else None
    return stats | {"rank": dist.rank, "world": dist.world, "batch": batch, "device": str(device),
                    "precision": precision, "complete": complete}
