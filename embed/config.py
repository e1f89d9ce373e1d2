"""Every setting of one embedding run, checked when it is made.

    cfg = Config(shards=Path("out/shards"), split="val", encoders=("vits16_800ep",),
                 weights="weights/", out=Path("out/embeddings.zarr"), views=2)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from embed.pipeline import CHOICES
from msnpipe.runtime import UserError

MAX_VIEWS = 64  # views a run makes per image (MSN trained with 12); more is a typo, and would hold memory


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting of one `python -m embed` run (see __main__ for the options)."""

    shards: Path | str             # a folder, or a URL (s3://bucket/shards)
    split: str
    encoders: tuple[str, ...]
    weights: str
    out: Path | str                # a Zarr store: a folder, or a URL
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
    cache: Path | None = None      # a remote split's local cache (None: shard.reader.default_cache)
    cache_gb: float = 8.0          # the most tars of a remote split held there at once

    def __post_init__(self):
        """Values out of range are one UserError naming the setting (the command line turns it
        into argparse's message); which decoder runs, and whether it makes views, is
        embed.pipeline.resolve's to say, once the device is known."""
        if not 0 <= self.views <= MAX_VIEWS:
            raise UserError(f"--views {self.views}: at most {MAX_VIEWS} (and >= 0); each view is a forward "
                            "pass per image")
        for name, value in (("--hw-share", self.hw_share), ("--cpu-share", self.cpu_share)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError(f"{name} {value}: a fraction from 0 to 1")
        for name, value, low in (("--threads", self.threads, 1), ("--check-drift", self.check_drift, 0),
                                 ("--batch-size", self.batch_size, 1)):
            if value is not None and value < low:
                raise UserError(f"{name} {value}: a whole number >= {low}")
        if not self.cache_gb > 0:
            raise UserError(f"--cache-gb {self.cache_gb}: a size in GB above 0")
        if self.decoder not in CHOICES:
            raise UserError(f"--decoder {self.decoder!r}: one of {', '.join(CHOICES)}")
