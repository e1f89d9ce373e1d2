"""A store group's contract with the runs that write it: what it must have been built from to
be resumed (its identity), what it records of what made it (its attributes and each run), and
its creation or refusal by rank 0 under the writer lock.

    identity = group_identity(spec, split, cfg, weights_info=info, precision="bf16")
    ensure_group(cfg, spec.name, split, identity=identity)   # create it, or refuse another's
    record_run(group, device=device, batch=256, world=1, cfg=cfg, threads=16)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from dataclasses import asdict

import torch

from embed import store
from embed.config import Config
from embed.encoders import EncoderSpec, get_spec
from embed.pipeline import fidelity
from shard.reader import Split

log = logging.getLogger("embed")


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


def group_identity(spec: EncoderSpec, split: Split, cfg: Config, *, weights_info: dict,
                   precision: str) -> dict:
    """What a store group must have been built from to be resumed (JSON-normalised)."""
    return json.loads(json.dumps({
        "encoder": spec.name, "shards_manifest_sha256": split.manifest_sha256,
        "weights_sha256": weights_info["weights_sha256"] or "random", "kind": cfg.kind,
        "preprocessing": asdict(spec.preprocess), "decoder": cfg.decoder, "precision": precision,
        "dtype": cfg.dtype,
        "num_samples": split.num_samples,
        "views": {"k": cfg.views, "augment": cfg.augment, "seed": cfg.view_seed} if cfg.views else None,
    }))


def group_attrs(spec: EncoderSpec, cfg: Config, *, split: Split, info: dict, identity: dict) -> dict:
    """What the group was made from (the same on every run): the encoder, its weights (`info`
    of embed.checkpoint.load_encoder), the shards, and the identity."""
    return {
        "encoder": spec.name, "architecture": spec.arch, "spec": spec.describe(), "kind": cfg.kind,
        "weights": info["weights"], "weights_sha256": info["weights_sha256"],
        "random_weights": info["random_weights"], "preprocessing": identity["preprocessing"],
        "precision": identity["precision"], "shards": split.url or str(split.dir),
        "shards_manifest_sha256": split.manifest_sha256, "num_shards": len(split.shards),
        "skipped_files": len(split.skipped), "classes": split.classes, "identity": identity,
        "key_digits": split.key_digits,
    }


def record_run(group, *, device: torch.device, batch: int, world: int, cfg: Config, threads: int) -> None:
    """Append this run to the group's `runs` (a group resumed on another machine keeps both): where
    it ran, and which decoder with which settings, how far its pixels lie from libjpeg-turbo's on
    a GPU (embed.pipeline.fidelity); the top-level device, batch_size and versions stay the first
    run's."""
    done = int(store.done_shards(group).sum())
    decoder = {"name": cfg.decoder, "threads": threads, "hw_share": cfg.hw_share,
               "cpu_share": cfg.cpu_share}
    if device.type == "cuda":
        decoder["grey_levels_from_libjpeg"] = round(fidelity(cfg.decoder, device), 4)
    run = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
           "device": device_name(device), "batch_size": batch, "world": world, "versions": versions(),
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


def recorded_decoder(cfg: Config, split: str) -> str | None:
    """The decoder the groups `cfg` would resume were built with (when they agree), so that
    `--decoder auto` resumes a group on a machine where it would pick another."""
    found = set()
    for name in cfg.encoders:
        group = store.open_group(cfg.out, name, split, mode="r")
        if group is not None and store.is_whole(group):
            found.add((group.attrs.asdict().get("identity") or {}).get("decoder"))
    return found.pop() if len(found) == 1 else None
