"""Does every decoder of the embed stage decode these JPEGs? Each decoder runs in worker
processes, so one that crashes on a file (DALI can) names the file instead of ending the run.

    from msnpipe.decoders import Sample, failures, usable
    names, missing = usable()                 # (["libjpeg-turbo", "dali-cpu", ...], {"nvjpeg": "no GPU"})
    for group, bad in failures("dali-cpu", [[Sample("00000007", "x.tar", 1536, 70213)]], workers=2):
        for sample, message in bad: ...       # every sample of the group the decoder could not decode

The decoders, as the embed stage runs them (`--decoder`), each where it can run:

    libjpeg-turbo   torchvision.io.decode_jpeg on the CPU (torchvision-cpu; torchvision on a CPU)
    dali-cpu        DALI's fn.decoders.image on the CPU (dali on a CPU)
    nvimgcodec-cpu  nvImageCodec's CPU backend (nvimgcodec on a CPU; the library under DALI's decoders)
    nvjpeg          torchvision.io.decode_jpeg on CUDA (torchvision on a GPU)
    dali-mixed      DALI's mixed decoder, nvJPEG (dali on a GPU)
    nvimgcodec-gpu  nvImageCodec on the GPU, hardware decoder first (nvimgcodec on a GPU)

A group that kills its process is decoded again alone, then split in halves, until the samples
that crash the decoder are found; each is reported as such.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

from msnpipe.pool import worker_pool
from msnpipe.runtime import cuda_available, installed

CPU_DECODERS = ("libjpeg-turbo", "dali-cpu", "nvimgcodec-cpu")
GPU_DECODERS = ("nvjpeg", "dali-mixed", "nvimgcodec-gpu")
DECODERS = CPU_DECODERS + GPU_DECODERS
_MODULES = {"libjpeg-turbo": "torchvision", "nvjpeg": "torchvision", "dali-cpu": "nvidia.dali",
            "dali-mixed": "nvidia.dali", "nvimgcodec-cpu": "nvidia.nvimgcodec",
            "nvimgcodec-gpu": "nvidia.nvimgcodec"}
BATCH = 32  # images a decoder call takes at once


# How the GPU libraries decode, here and in embed's decoders alike (one place for their settings).
DALI_SIZE_HINTS = (5980, 6430)  # (width, height): ImageNet's largest, what the HW decoder preallocates for


def dali_decode_options(mixed: bool, hw_share: float | None = None) -> dict:
    """Keyword arguments of DALI's fn.decoders.image: RGB, no EXIF orientation (PIL applies none),
    libjpeg's chroma upsampling (`jpeg_fancy_upsampling`: PIL's pixels, not nvJPEG's own); on
    `mixed`, the hardware decoder's share of each batch (DALI's default 0.65 when None) and the
    size hints it preallocates for."""
    from nvidia.dali import types

    options = {"output_type": types.RGB, "adjust_orientation": False, "jpeg_fancy_upsampling": True}
    if mixed:
        width, height = DALI_SIZE_HINTS
        options |= {"preallocate_width_hint": width, "preallocate_height_hint": height}
        if hw_share is not None:
            options["hw_decoder_load"] = hw_share
    return options


def nvimgcodec_decoder(device_id: int | None, *, threads: int = 0, hw_share: float = 1.0,
                       cpu_share: float = 0.0):
    """An nvImageCodec Decoder. `device_id` None: its CPU backend alone (libjpeg-turbo, PIL's
    pixels). A GPU: backends in order of preference, each taking its share of a batch and passing
    on what it refuses: a `cpu_share` on `threads` CPU threads (when above 0), the hardware JPEG
    engines (a `hw_share` of what they accept), then GPU_ONLY and HYBRID_CPU_GPU (nvJPEG's CUDA
    decoder is the hybrid backend: progressive files, odd subsampling and the rest go there).
    Fancy upsampling on: chroma upsampled as libjpeg (PIL) does (nvJPEG's hardware and CUDA
    decoders both take the flag)."""
    from nvidia import nvimgcodec as n

    options = ":fancy_upsampling=1"
    if device_id is None:
        return n.Decoder(device_id=n.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=threads,
                         backends=[n.Backend(n.BackendKind.CPU_ONLY)], options=options)
    backends = [n.Backend(n.BackendKind.CPU_ONLY, load_hint=cpu_share)] if cpu_share > 0 else []
    backends += [n.Backend(n.BackendKind.HW_GPU_ONLY, load_hint=hw_share), n.Backend(n.BackendKind.GPU_ONLY),
                 n.Backend(n.BackendKind.HYBRID_CPU_GPU)]
    return n.Decoder(device_id=device_id, max_num_cpu_threads=threads, backends=backends, options=options)


def nvimgcodec_params():
    """nvImageCodec DecodeParams: planar RGB uint8 ([3, H, W]), no EXIF orientation."""
    from nvidia import nvimgcodec as n

    return n.DecodeParams(apply_exif_orientation=False, color_spec=n.SRGB, sample_format=n.P_RGB)


@dataclass(frozen=True)
class Sample:
    """One JPEG to decode: `key` names it in reports; its bytes are `size` bytes of file `path`
    from `offset` (size -1: to the end of the file)."""

    key: str
    path: str
    offset: int = 0
    size: int = -1


def usable() -> tuple[list[str], dict[str, str]]:
    """(the decoders that can run here, in DECODERS order; {decoder: why not} for the others)."""
    gpu = cuda_available()
    names, missing = [], {}
    for name in DECODERS:
        if not installed(_MODULES[name]):
            missing[name] = f"{_MODULES[name]} is not installed"
        elif name in GPU_DECODERS and not gpu:
            missing[name] = "no GPU here"
        else:
            names.append(name)
    return names, missing


def _read(samples: list[Sample]) -> list[bytes]:
    out, files = [], {}
    try:
        for s in samples:
            f = files.get(s.path) or files.setdefault(s.path, open(s.path, "rb"))  # noqa: SIM115
            f.seek(s.offset)
            out.append(f.read() if s.size < 0 else f.read(s.size))
    finally:
        for f in files.values():
            f.close()
    return out


@contextmanager
def _stderr_captured(into: list[str]):
    """Collect what C libraries print on file descriptor 2 while the block runs (DALI and
    nvImageCodec say why they refuse a file there, not in their exception)."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            into.append(tmp.read().decode(errors="replace"))


def _said(text: str) -> str:
    """The decoder's own words on one line: its errors (else its warnings), colours and repeats
    removed."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    errors = [line.removeprefix("[ERROR]").strip() for line in lines if line.startswith("[ERROR]")]
    return "; ".join(dict.fromkeys(line for line in errors or lines if line))[:300]


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    wanted = [line for line in lines if ("failure" in line or "rror" in line) and "pipeline" not in line]
    return (wanted or lines or [type(e).__name__])[-1][:200]


# -- the decoders, in the worker ----------------------------------------------------------------

_CACHE: dict = {}  # per worker process: pipelines and decoder objects, made once


def _torchvision(data: list[bytes], device: str) -> list[str | None]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    if device == "cuda":
        try:
            decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cuda")
            return [None] * len(data)
        except RuntimeError:
            pass  # one bad image fails the batch: find it image by image
    out = []
    for t in tensors:
        try:
            decode_jpeg(t, mode=ImageReadMode.RGB, device=device)
            out.append(None)
        except RuntimeError as e:
            out.append(_one_line(e))
    return out


def _dali_pipeline(device: str, batch: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=max(1, min(4, os.cpu_count() or 1)),
                  device_id=None if device == "cpu" else 0, exec_dynamic=True, prefetch_queue_depth=1)
    def pipe():
        jpg = fn.external_source(name="jpg", dtype=types.UINT8)
        return fn.decoders.image(jpg, device=device, **dali_decode_options(device == "mixed"))

    p = pipe()
    p.build()
    return p


def _dali(data: list[bytes], device: str) -> list[str | None]:
    import numpy as np

    def run(items: list[bytes]) -> str | None:
        key = ("dali", device, len(items))
        if key not in _CACHE:
            _CACHE[key] = _dali_pipeline(device, len(items))
        p = _CACHE[key]
        said: list[str] = []
        try:
            with _stderr_captured(said):
                p.feed_input("jpg", [np.frombuffer(d, dtype=np.uint8) for d in items])
                p.run()
            return None
        except RuntimeError as e:
            del _CACHE[key]  # "no longer valid" after an error
            return "; ".join(x for x in (_one_line(e), _said("".join(said))) if x)

    if run(data) is None:
        return [None] * len(data)
    return [run([d]) for d in data]  # which of them: one at a time


def _nvimgcodec(data: list[bytes], device: str) -> list[str | None]:
    from nvidia import nvimgcodec

    key = ("nvimgcodec", device)
    if key not in _CACHE:
        _CACHE[key] = nvimgcodec_decoder(None if device == "cpu" else 0)
    out = []
    for d in data:
        said: list[str] = []
        try:
            with _stderr_captured(said):
                image = _CACHE[key].decode(nvimgcodec.CodeStream(d), params=nvimgcodec_params())
        except RuntimeError as e:  # a stream it cannot even parse
            image, said = None, [*said, str(e)]
        out.append(None if image is not None else (_said("".join(said)) or "no image decoded"))
    return out


_DECODE: dict[str, Callable[[list[bytes]], list[str | None]]] = {
    "libjpeg-turbo": lambda d: _torchvision(d, "cpu"), "nvjpeg": lambda d: _torchvision(d, "cuda"),
    "dali-cpu": lambda d: _dali(d, "cpu"), "dali-mixed": lambda d: _dali(d, "mixed"),
    "nvimgcodec-cpu": lambda d: _nvimgcodec(d, "cpu"), "nvimgcodec-gpu": lambda d: _nvimgcodec(d, "cuda"),
}


def decoder_function(name: str) -> Callable[[list[bytes]], list[str | None]]:
    """The decode function of a decoder: a name of DECODERS, or `module:function`, any function
    from a list of JPEG bytes to a message for each (None: decoded)."""
    if name in _DECODE:
        return _DECODE[name]
    module, _, function = name.partition(":")
    import importlib

    return getattr(importlib.import_module(module), function)


def decode_bytes(decoder: str, data: list[bytes]) -> list[str]:
    """The message of every JPEG of `data` that `decoder` cannot decode (in this process)."""
    return [m for m in decoder_function(decoder)(data) if m is not None]


def decode_group(decoder: str, samples: list[Sample]) -> list[tuple[Sample, str]]:
    """(sample, message) for every sample of `samples` that `decoder` cannot decode (in this process)."""
    bad, decode = [], decoder_function(decoder)
    for i in range(0, len(samples), BATCH):
        part = samples[i : i + BATCH]
        for s, message in zip(part, decode(_read(part))):
            if message is not None:
                bad.append((s, message))
    return bad


# -- the parent: worker processes that may die ----------------------------------------------------


def _isolated(decoder: str, samples: list[Sample]) -> list[tuple[Sample, str]]:
    """decode_group in a process of its own; if the process dies, each half again, down to the
    samples that kill it."""
    try:
        with worker_pool(1) as pool:
            return pool.submit(decode_group, decoder, samples).result()
    except BrokenProcessPool:
        if len(samples) == 1:
            return [(samples[0], f"{decoder} crashed the process decoding it")]
        mid = len(samples) // 2
        return _isolated(decoder, samples[:mid]) + _isolated(decoder, samples[mid:])


def failures(decoder: str, groups: Iterable[list[Sample]], *, workers: int = 1
             ) -> Iterator[tuple[list[Sample], list[tuple[Sample, str]]]]:
    """For each group, in order: (group, [(sample, message)] for the samples `decoder` cannot
    decode), decoded in `workers` processes. A decoder that cannot start raises RuntimeError."""
    groups = iter(groups)
    pool, pending = worker_pool(workers), deque()
    try:
        while True:
            while len(pending) < 2 * workers and (g := next(groups, None)) is not None:
                pending.append((g, pool.submit(decode_group, decoder, g)))
            if not pending:
                return
            g, future = pending.popleft()
            try:
                bad = future.result()
            except BrokenProcessPool:  # this group, or one decoded beside it, killed a worker
                pool.shutdown(cancel_futures=True)
                bad = _isolated(decoder, g)
                pool = worker_pool(workers)
                pending = deque((h, pool.submit(decode_group, decoder, h)) for h, _ in pending)
            except Exception as e:  # the decoder's own set-up failed: it cannot run here
                raise RuntimeError(f"{decoder} cannot run here: {_one_line(e)}") from e
            yield g, bad
    finally:
        pool.shutdown(cancel_futures=True)
