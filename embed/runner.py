"""One encoder at run time: its model (compiled or eager) under autocast, a forward pass that
backs off to smaller micro-batches on CUDA out-of-memory, the fp32 drift meter, and the
copy of rows to the host.

    runner = EncoderRunner(spec, model, kind="cls_prenorm", device=device, precision="bf16",
                           compile=True, drift_images=256)
    rows = runner.forward(images)          # [B, 3, 224, 224] -> [B, D] float32, on the device
    runner.measure_drift(images, rows, real)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch

from embed.encoders import EncoderSpec
from embed.models import Embedder

log = logging.getLogger("embed")
AUTO_BATCHES = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
HEADROOM = 0.8  # of the free GPU memory a step may plan to use
PROBE_SIZES = (16, 64)  # batches a step is measured at, to fit memory = fixed + per_image * batch


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def run_chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int, *,
                what: str) -> tuple[torch.Tensor, int]:
    """(cat of fn over micro-batches of x [B, ...], the micro-batch size used). On CUDA out of
    memory the micro-batch halves and the batch is retried; at 1 the error is raised."""
    while True:
        try:
            return torch.cat([fn(c) for c in x.split(chunk)]), chunk
        except torch.cuda.OutOfMemoryError:
            if min(chunk, len(x)) == 1:
                raise
        # past the except block the exception and its frames are gone, so their tensors can be freed
        chunk = max(1, min(chunk, len(x)) // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("%s: out of memory; micro-batches of %d", what, chunk)


class EncoderRunner:
    """The model of one encoder on its device, and what it measured."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, *, kind: str, device: torch.device,
                 precision: str, compile: bool, drift_images: int = 0):
        self.spec, self.device, self.precision = spec, device, precision
        self.eager = Embedder(model, kind).to(device).eval()
        self.compiled = compile
        self.model = torch.compile(self.eager, dynamic=False) if compile else self.eager
        self.chunk = self.drift_chunk = 1 << 30  # micro-batch sizes; halve on out-of-memory
        self.drift_left, self.drift_cos = drift_images, []

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.model(x).float()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] -> [B, D] float32 on the model's device."""
        rows, self.chunk = run_chunked(self._forward, x, self.chunk, what=self.spec.name)
        return rows

    @torch.inference_mode()
    def measure_drift(self, x: torch.Tensor, rows: torch.Tensor, real: int) -> None:
        """Cosine between `rows` and fp32 eager rows of the same images, for the first K images."""
        take = min(self.drift_left, real)
        if take <= 0:
            return
        ref, self.drift_chunk = run_chunked(lambda c: self.eager(c.float()), x[:take], self.drift_chunk,
                                            what=f"{self.spec.name} fp32 drift pass")
        self.drift_cos += torch.nn.functional.cosine_similarity(rows[:take], ref, dim=1).tolist()
        self.drift_left -= take

    def drift(self) -> dict | None:
        """{images, min_cos, mean_cos} of the drift pass, or None when none was asked for."""
        if not self.drift_cos:
            return None
        return {"images": len(self.drift_cos), "min_cos": min(self.drift_cos),
                "mean_cos": float(np.mean(self.drift_cos))}


def largest_batch(fixed: int, per_image: int, free: int, *, headroom: float = HEADROOM) -> int:
    """The largest batch of AUTO_BATCHES whose planned bytes (fixed + per_image * batch) stay
    within `headroom` of `free` bytes; 1 when none does (the back-off then halves micro-batches)."""
    return next((b for b in AUTO_BATCHES if fixed + per_image * b <= headroom * free), 1)


def _step_peak(runners: list[EncoderRunner], device: torch.device, batch: int, *, views: int,
               drift: bool) -> int:
    """Peak bytes above the baseline of one real step at `batch`: the decoded batch and its K
    views held, each encoder's forward (eager: it holds more than the compiled graph), and the
    fp32 drift pass."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = torch.zeros(batch * (1 + views), 3, 224, 224, device=device)  # images and views, as decoded
    with torch.inference_mode():
        for r in runners:
            with autocast(device, r.precision):
                r.eager(x[:batch]).float()
            if drift:
                r.eager(x[:batch])
    peak = torch.cuda.max_memory_allocated(device) - base
    del x
    return peak


def auto_batch(runners: list[EncoderRunner], device: torch.device, views: int = 0, *,
               drift: bool = False) -> int:
    """The batch a real step can hold on this GPU: a step's peak memory measured at two small
    batches (images, K views, every encoder, the drift pass), extended linearly to the free
    memory, with headroom. Out-of-memory at run time still halves micro-batches."""
    small, large = (_step_peak(runners, device, b, views=views, drift=drift) for b in PROBE_SIZES)
    # at least what the step's input holds per image, whatever the allocator's rounding says
    floor = (1 + views) * 3 * 224 * 224 * 4
    per_image = max(floor, (large - small) // (PROBE_SIZES[1] - PROBE_SIZES[0]))
    fixed = max(0, small - per_image * PROBE_SIZES[0])
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info(device)[0]
    batch = largest_batch(fixed, per_image, free)
    log.info("batch %d: a step holds %.1f MiB + %.2f MiB per image; %.1f GiB free", batch, fixed / 2**20,
             per_image / 2**20, free / 2**30)
    return batch


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
