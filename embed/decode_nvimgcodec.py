"""The nvImageCodec decoder (`--decoder nvimgcodec`): the library under DALI's decoders, called
directly, a whole batch per call.

Members are read through their `.idx` and batches prepared ahead by `embed.members`. On CUDA a
batch is one `Decoder.decode` call (msnpipe.decoders.nvimgcodec_decoder: the hardware JPEG
engines first, the CUDA decoder for what they refuse, an optional share on CPU threads; fancy
upsampling, so chroma is upsampled as libjpeg does), its output in device memory on the
Preparer's stream, then resized, cropped and normalized for the whole batch at once
(`embed.resize.resized_crops`). On the CPU its libjpeg-turbo backend decodes the batch in
`threads` threads (PIL's pixels exactly) and each image goes through torchvision's own
transform. A JPEG it cannot decode raises `DecodeError` naming the sample, with the library's
own words.

    for b in nvimgcodec_batches(tars, idxs, order, pre=Preprocess(), batch_size=256,
                                device=torch.device("cuda"), threads=16, hw_share=1.0): ...
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from embed.batch import Batch, DecodeError, tiny_jpeg
from embed.encoders import Preprocess
from embed.members import Member, Preparer, jpeg_members, prefetched
from msnpipe.decoders import decode_bytes, nvimgcodec_decoder, nvimgcodec_params


def decoder_name(device: torch.device) -> str:
    """How msnpipe.decoders names the nvImageCodec decoder that runs on `device`."""
    return "nvimgcodec-gpu" if device.type == "cuda" else "nvimgcodec-cpu"


def unusable(device: torch.device) -> str | None:
    """Why nvImageCodec cannot decode on `device` here (it decodes a tiny JPEG to see), or None."""
    try:
        bad = decode_bytes(decoder_name(device), [tiny_jpeg()])
    except Exception as e:  # a library or CUDA error: installed but it cannot run
        said = str(e).splitlines()[0][:160] if str(e) else ""
        return f"nvImageCodec cannot run on {device} ({type(e).__name__}: {said})"
    return f"nvImageCodec cannot decode on {device} ({bad[0]})" if bad else None


def _tensor(image, device: torch.device) -> torch.Tensor:
    """An nvImageCodec Image, planar uint8 [3, H, W], as a torch tensor on `device` (the Image's
    memory, kept alive by the tensor, where it is already there)."""
    if device.type == "cuda" and str(image.buffer_kind).endswith("DEVICE"):
        return torch.from_dlpack(image)
    host = torch.from_numpy(np.asarray(image.cpu() if device.type == "cuda" else image))
    return host.to(device, non_blocking=True) if device.type == "cuda" else host


def pixels(data: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] CPU tensors of JPEGs as this decoder decodes them on `device`."""
    from nvidia import nvimgcodec

    decoder = nvimgcodec_decoder(None if device.type != "cuda" else (device.index or 0))
    images = decoder.decode([nvimgcodec.CodeStream(d) for d in data], params=nvimgcodec_params())
    if any(im is None for im in images):
        raise RuntimeError("nvImageCodec decoded no image of a test JPEG")
    return [torch.from_numpy(np.asarray(im.cpu())).clone() for im in images]


class NvimgcodecPreparer(Preparer):
    """One nvImageCodec decode call per batch; on CUDA its output stays on the device."""

    def __init__(self, pre: Preprocess, device: torch.device, threads: int, *, hw_share: float = 1.0,
                 cpu_share: float = 0.0):
        super().__init__(pre, device, threads, on_host=device.type != "cuda")
        self.name = decoder_name(device)
        self.decoder = nvimgcodec_decoder(None if device.type != "cuda" else (device.index or 0),
                                          threads=threads, hw_share=hw_share, cpu_share=cpu_share)
        self.params = nvimgcodec_params()

    def _decoded(self, members: list[Member], data: list[bytearray], stream: int) -> list:
        from nvidia import nvimgcodec

        images = self.decoder.decode([nvimgcodec.CodeStream(d) for d in data], params=self.params,
                                     cuda_stream=stream)
        for m, d, image in zip(members, data, images):
            if image is None:  # decoded again alone, for the library's own words on it
                said = decode_bytes(self.name, [bytes(d)])
                raise DecodeError(m[3], self.name, said[0] if said else "no image decoded")
        return images

    def decode_host(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        return [_tensor(image, self.device) for image in self._decoded(members, data, 0)]

    def decode_device(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        stream = torch.cuda.current_stream(self.device)
        return [_tensor(image, self.device) for image in self._decoded(members, data, stream.cuda_stream)]


def nvimgcodec_batches(tars: list[Path], idxs: list[Path], order: np.ndarray, *, pre: Preprocess,
                       batch_size: int, device: torch.device, threads: int, hw_share: float = 1.0,
                       cpu_share: float = 0.0) -> Iterator[Batch]:
    """Every sample of `tars` once, in fixed-size batches; padding is marked with index -1."""
    prepare = NvimgcodecPreparer(pre, device, threads, hw_share=hw_share, cpu_share=cpu_share)
    yield from prefetched(jpeg_members(tars, idxs), order, prepare, batch_size=batch_size, device=device)
