"""What the decoders that read shards themselves share (torchvision, nvImageCodec): each JPEG
member through its `.idx` (one seek and one read of exactly its size, one tar open at a time,
so ImageNet's 1,282 train shards never meet the open-file limit), the preparation of a batch
(decode, then the reference transform), and the loop that prepares batch i + 1 in a background
thread while the model runs on batch i.

    members = jpeg_members(tars, idxs)          # [(tar, offset, size, sample index)]
    prepare = TorchvisionPreparer(pre, device, threads)   # a Preparer: decode_host / decode_device
    for b in prefetched(members, order, prepare, batch_size=256, device=device): ...

A Preparer decodes in one of two ways. On the host (`decode_host`: uint8 [3, H, W] CPU
tensors), then torchvision's own transform per image in `threads` threads (its ops release the
GIL), so pixels are the reference path's; on CUDA the batch is then copied to the GPU from
pinned memory. On the GPU (`decode_device`: uint8 [3, H, W] tensors on the device, on the
Preparer's own stream), then `embed.resize.resized_crops` over the whole batch and one
normalization: no resize, crop or normalize launches per image, uint8 until the weighing.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from embed.batch import Batch, check_order
from embed.encoders import Preprocess
from embed.resize import normalized, reference_transform, resized_crops
from shard.reader import ShardFormatError, read_index

Member = tuple[Path, int, int, int]  # (tar, offset, size, sample index)


def jpeg_members(tars: list[Path], idxs: list[Path]) -> list[Member]:
    """Every `.jpg` member of the tars, in order, from their indexes."""
    return [(tar, offset, size, int(key)) for tar, idx in zip(tars, idxs)
            for key, ext, offset, size in read_index(idx) if ext == "jpg"]


class MemberReader:
    """Reads members, keeping the one tar being read open (members come in order)."""

    def __init__(self):
        self.tar: tuple[Path, object] | None = None

    def _file(self, tar: Path):
        if self.tar is None or self.tar[0] != tar:
            self.close()
            self.tar = (tar, open(tar, "rb"))  # noqa: SIM115 - closed when the next shard starts
        return self.tar[1]

    def read(self, m: Member) -> bytearray:
        tar, offset, size, index = m
        f, data = self._file(tar), bytearray(size)
        f.seek(offset)
        if (got := f.readinto(data)) != size:
            raise ShardFormatError(f"{tar}: sample {index} is cut short ({got} of the {size} bytes its "
                                   "index lists); the shard changed since it was made: shard it again")
        return data

    def close(self) -> None:
        if self.tar is not None:
            self.tar[1].close()
            self.tar = None


class Preparer:
    """Reads, decodes and transforms one batch of members on `device` (see the module's text);
    a decoder gives `decode_host` (used when `on_host`) or `decode_device`."""

    name = "?"  # how DecodeError names the decoder

    def __init__(self, pre: Preprocess, device: torch.device, threads: int, *, on_host: bool):
        self.pre, self.device, self.on_host = pre, device, on_host
        self.reader = MemberReader()
        self.pool = ThreadPoolExecutor(max(1, threads)) if on_host else None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode_host(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        """uint8 [3, H, W] CPU tensors, one per member, or DecodeError naming the first that fails."""
        raise NotImplementedError

    def decode_device(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        """uint8 [3, H, W] tensors on the device (queued on the current stream), or DecodeError."""
        raise NotImplementedError

    def host_images(self, members: list[Member], data: list[bytearray]) -> list[torch.Tensor]:
        """float32 [3, crop, crop] CPU tensors: decode_host, then the reference transform in the pool
        (a decoder that decodes image by image does both in one task of the pool instead)."""
        decoded = self.decode_host(members, data)
        return list(self.pool.map(lambda im: reference_transform(im, self.pre), decoded))

    def __call__(self, members: list[Member]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """(images [b, 3, crop, crop] float32 on the device, the event marking them ready on CUDA)."""
        data = [self.reader.read(m) for m in members]
        if self.on_host:
            images = torch.stack(self.host_images(members, data))
            if self.stream is None:
                return images, None  # [b, 3, crop, crop]
            images = images.pin_memory()
        with torch.cuda.stream(self.stream):
            if self.on_host:
                images = images.to(self.device, non_blocking=True)
            else:
                x = resized_crops(self.decode_device(members, data), self.pre.resize, self.pre.crop)
                images = normalized(x, self.pre.mean, self.pre.std)  # [b, 3, crop, crop]
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return images, ready

    def close(self) -> None:
        self.reader.close()
        if self.pool is not None:
            self.pool.shutdown()


def _pad(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A short last batch padded to `batch_size` by repeating its last image (as DALI pads)."""
    if len(images) == batch_size:
        return images
    return torch.cat([images, images[-1:].expand(batch_size - len(images), -1, -1, -1)])


def prefetched(members: list[Member], order: np.ndarray, prepare: Preparer, *, batch_size: int,
               device: torch.device) -> Iterator[Batch]:
    """Every member once, in fixed-size batches (padding marked with index -1), batch i + 1
    prepared in a background thread (on CUDA, on its own stream) while the model runs on batch i;
    `prepare` is closed at the end."""
    check_order(np.array([m[3] for m in members], dtype=np.int64), order, 0)
    if len(members) != len(order):
        raise RuntimeError(f"the indexes list {len(members)} images, the manifest {len(order)}")
    chunks = [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    ahead = ThreadPoolExecutor(1)  # one batch prepared while the model runs on the last
    try:
        pending: Future = ahead.submit(prepare, chunks[0])
        for i, chunk in enumerate(chunks):
            images, ready = pending.result()
            if i + 1 < len(chunks):
                pending = ahead.submit(prepare, chunks[i + 1])
            if ready is not None:
                torch.cuda.current_stream(device).wait_event(ready)
                images.record_stream(torch.cuda.current_stream(device))  # freed only after its use
            indices = np.full(batch_size, -1, dtype=np.int64)
            indices[: len(chunk)] = [m[3] for m in chunk]
            yield Batch(_pad(images, batch_size), indices)
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)
        prepare.close()
