"""python -m embed SHARDS --split S --encoder NAME --weights PATH --out STORE.zarr

    # one process: a GPU if there is one (bf16, torch.compile, auto batch), else all CPU cores
    python -m embed out/shards --split val --encoder vitl7_200ep --weights weights/ \
        --out out/embeddings.zarr
    # several encoders, images decoded once; --weights is then a folder of <name>.pth.tar
    python -m embed out/shards --split val --encoder vits16_800ep,vitb16_600ep --weights weights/ \
        --out out/embeddings.zarr
    # many GPUs, one node or several (shared file system)
    torchrun --nproc-per-node 8 -m embed out/shards --split train --encoder vitl7_200ep \
        --weights weights/ --out out/embeddings.zarr

A killed run, started again with the same command, embeds only the shards not yet written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from embed.config import Config
from embed.encoders import ENCODERS, KINDS, get_spec
from embed.pipeline import CHOICES as DECODERS
from embed.store import DTYPES
from msnpipe.remote import location
from msnpipe.runtime import UserError, command

log = logging.getLogger("embed")


def _batch(text: str) -> int | None:
    return None if text == "auto" else int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", type=location, help="the OUT of python -m shard: a folder or a URL (s3://...)")
    p.add_argument("--split", required=True, help="split to embed (a folder of SHARDS)")
    p.add_argument("--encoder", required=True,
                   help=f"one or more (comma-separated) of: {', '.join(ENCODERS)}")
    p.add_argument("--weights", required=True,
                   help="checkpoint file, folder of <name>.pth.tar, or 'random' (demos/tests only)")
    p.add_argument("--out", type=location, required=True,
                   help="Zarr store, a folder or a URL (created if absent)")
    p.add_argument("--kind", choices=KINDS, default="cls_prenorm",
                   help="cls_prenorm (default, the reference), cls (after the final norm), mean")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="auto: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on CUDA only)")
    p.add_argument("--batch-size", type=_batch, default=None,
                   help="images per batch, or auto (default: largest that fits on CUDA, 16 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--decoder", choices=DECODERS, default="auto",
                   help="auto (default: on a GPU the first of nvimgcodec, dali, torchvision, "
                        "torchvision-cpu that runs with libjpeg's pixels, on the CPU dali else torchvision; "
                        "a resumed store keeps its own), nvimgcodec (nvImageCodec, the hardware JPEG "
                        "engines first), dali (nvJPEG on a GPU; views), torchvision (decode_jpeg, nvJPEG "
                        "on a GPU) or torchvision-cpu (libjpeg-turbo on the CPU: PIL's pixels)")
    p.add_argument("--hw-share", type=float, default=None, metavar="F",
                   help="on a GPU, the share of each batch for the hardware JPEG engines (nvimgcodec, "
                        "dali; default: the library's own, 1 and 0.65)")
    p.add_argument("--cpu-share", type=float, default=0.0, metavar="F",
                   help="nvimgcodec on a GPU: the share of each batch decoded on CPU threads (default 0)")
    p.add_argument("--check-drift", type=int, default=0, metavar="K",
                   help="also embed the first K images in fp32 eager; record min/mean cosine")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of stored rows")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--cache", type=Path, default=None,
                   help="remote shards: the local folder their tars are fetched into (default: "
                        "$MSNPIPE_CACHE or ~/.cache/msnpipe, then the URL's path)")
    p.add_argument("--cache-gb", type=float, default=8.0,
                   help="remote shards: the most GB of tars held in the cache at once (default 8)")
    p.add_argument("--views", type=int, default=0, metavar="K",
                   help="also embed K augmented views per image into `views` [N, K, D] (default 0)")
    p.add_argument("--augment", choices=("msn", "simclr", "none"), default="msn",
                   help="the views' augmentation (see embed/views.py)")
    p.add_argument("--view-seed", type=int, default=0, help="views are a function of (seed, index, view)")
    return p


def parse_args(argv: list[str] | None = None):
    """The command line of `python -m embed`, as an embed.config.Config."""
    p = _parser()
    a = p.parse_args(argv)
    names = tuple(n.strip() for n in a.encoder.split(",") if n.strip())
    try:
        [get_spec(n) for n in names]
    except KeyError as e:
        p.error(e.args[0])
    extra = {"threads": a.threads} if a.threads is not None else {}
    try:
        return Config(shards=a.shards, split=a.split, encoders=names, weights=a.weights, out=a.out,
                      kind=a.kind, precision=a.precision, compile=a.compile, batch_size=a.batch_size,
                      device=a.device, check_drift=a.check_drift, dtype=a.dtype, views=a.views,
                      augment=a.augment, view_seed=a.view_seed, decoder=a.decoder, hw_share=a.hw_share,
                      cpu_share=a.cpu_share, cache=a.cache, cache_gb=a.cache_gb, **extra)
    except UserError as e:
        p.error(str(e))


def _run(cfg) -> dict:
    from embed.run import run

    log.info("config: %s", cfg)
    return run(cfg)


def _report(cfg, s: dict) -> None:
    steady = s["steady_s"]
    rate = s["steady_images"] / steady if steady else 0.0
    log.info("rank %d: %d images in %.1f s, %.1f s of it the first batch (compile, warm-up); then %.1f img/s "
             "until the rows were stored (waiting for data %.0f%%, computing %.0f%%%s)%s", s["rank"],
             s["images"], s["wall_s"], s["first_batch_s"], rate, 100 * s["wait_s"] / (steady or 1),
             100 * s["compute_s"] / (steady or 1),
             ", GPU time by CUDA events" if "cuda" in s["device"] else "",
             "; store complete" if s["complete"] else "")


def main(argv: list[str] | None = None) -> int:
    """Run the embed stage; return the exit status."""
    return command(parse_args, _run, argv, logger="embed", done=_report)


if __name__ == "__main__":
    sys.exit(main())
