"""The torchvision decoder (`embed.pipeline.batches("torchvision", ...)`): shards to batches
with PyTorch alone, for machines where neither DALI nor nvImageCodec is installed.

Members are read through their `.idx` and batches prepared ahead by `embed.members`. A batch's
JPEGs are decoded by `torchvision.io.decode_jpeg`: on CUDA in one batched nvJPEG call, then
resized, cropped and normalized for the whole batch at once (`embed.resize.resized_crops`); on
the CPU (or with `cpu_decode`: `--decoder torchvision-cpu`, whatever the model's device) by
libjpeg-turbo per image in `threads` threads, each image then going through torchvision's own
tensor transforms, so pixels are PIL's. A JPEG it cannot decode raises `DecodeError` naming the
sample (on CUDA, the batch's JPEGs are decoded one by one to find it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from embed.batch import Batch, DecodeError, tiny_jpeg
from embed.encoders import Preprocess
from embed.members import Member, Preparer, jpeg_members, prefetched
from embed.resize import reference_transform


def unusable(device: torch.device) -> str | None:
    """Why torchvision cannot decode on `device` (nvJPEG on CUDA), or None."""
    if device.type != "cuda":
        return None
    from torchvision.io import decode_jpeg

    try:
        decode_jpeg(torch.frombuffer(bytearray(tiny_jpeg()), dtype=torch.uint8), device=device)
    except RuntimeError as e:
        return f"torchvision cannot decode with nvJPEG here ({str(e).splitlines()[0][:160]})"
    return None


def pixels(data: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] CPU tensors of JPEGs as this decoder decodes them on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    if device.type != "cuda":
        return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]
    return [im.cpu() for im in decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)]


def _said(e: RuntimeError) -> str:
    return str(e).strip().splitlines()[-1][:200]


class TorchvisionPreparer(Preparer):
    """decode_jpeg: libjpeg-turbo per image on the host, nvJPEG batched on CUDA."""

    def __init__(self, pre: Preprocess, device: torch.device, threads: int, *, cpu_decode: bool = False):
        on_host = cpu_decode or device.type == "cpu"
        super().__init__(pre, device, threads, on_host=on_host)
        self.name = "libjpeg-turbo" if on_host else "nvjpeg"

    def _one(self, m: Member, d: bytearray) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(torch.frombuffer(d, dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise DecodeError(m[3], self.name, _said(e)) from None

    def decode_host(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        return list(self.pool.map(self._one, members, data))

    def host_images(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        transformed = lambda m, d: reference_transform(self._one(m, d), self.pre)  # noqa: E731
        return list(self.pool.map(transformed, members, data))  # decode and transform in one task

    def decode_device(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in data]
        try:
            return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)  # nvJPEG, batched
        except RuntimeError:
            for m, t in zip(members, tensors):  # one image fails the batch: find it
                try:
                    decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device)
                except RuntimeError as e:
                    raise DecodeError(m[3], self.name, _said(e)) from None
            raise


def torchvision_batches(tars: list[Path], idxs: list[Path], order: np.ndarray, *, pre: Preprocess,
                        batch_size: int, device: torch.device, threads: int,
                        cpu_decode: bool = False) -> Iterator[Batch]:
    """Every sample of `tars` once, in fixed-size batches; padding is marked with index -1."""
    prepare = TorchvisionPreparer(pre, device, threads, cpu_decode=cpu_decode)
    yield from prefetched(jpeg_members(tars, idxs), order, prepare, batch_size=batch_size, device=device)
