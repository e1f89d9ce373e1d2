"""The torchvision decoder (`embed.pipeline.batches("torchvision", ...)`): shards to batches
with PyTorch alone, for machines where DALI has no wheel.

Each shard's `.idx` gives every JPEG's offset and size, so a member is one seek and one read
of exactly that many bytes; one tar is open at a time (members are read in order), so a run
over ImageNet's 1,282 train shards never meets the open-file limit. A JPEG it cannot decode
raises `DecodeError` naming the sample (on CUDA, the batch's JPEGs are decoded one by one to
find it).
A batch's JPEGs are decoded by `torchvision.io.decode_jpeg` (on CUDA in one batched nvJPEG
call; on the CPU per image, in `threads` threads), then each image goes through torchvision's
own tensor transforms (with `cpu_decode`, decoding and transforms run on the CPU and the batch
is copied to the GPU from pinned memory): `resize([256])` (bilinear, antialiased, the shorter side to 256 by
torchvision's size rule, uint8 rounded as PIL rounds), `center_crop(224)` (torchvision's
anchor), scaled to [0, 1] and normalized. The next batch is prepared in a background thread
(on CUDA, on its own stream) while the model runs on this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from embed.batch import Batch, DecodeError, check_order
from embed.encoders import Preprocess
from embed.resize import FULL_RESIZE_PIXELS, resized_crop, resized_size
from shard.reader import ShardFormatError, read_index

Member = tuple[Path, int, int, int]  # (tar, offset, size, sample index)


def unusable(device: torch.device) -> str | None:
    """Why torchvision cannot decode on `device` (nvJPEG on CUDA), or None."""
    if device.type != "cuda":
        return None
    from torchvision.io import decode_jpeg

    from embed.decode_dali import _tiny_jpeg

    try:
        decode_jpeg(torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8), device=device)
    except RuntimeError as e:
        return f"torchvision cannot decode with nvJPEG here ({str(e).splitlines()[0][:160]})"
    return None


def jpeg_members(tars: list[Path], idxs: list[Path]) -> list[Member]:
    """Every `.jpg` member of the tars, in order, from their indexes."""
    return [(tar, offset, size, int(key)) for tar, idx in zip(tars, idxs)
            for key, ext, offset, size in read_index(idx) if ext == "jpg"]


def transform(img: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 [3, H, W] -> float32 [3, crop, crop]: the reference transform on a tensor (an image
    whose resize would be huge, a long strip, is resized in its kept region alone: embed.resize)."""
    from torchvision.transforms.v2 import functional as F

    nh, nw = resized_size(img.shape[-2], img.shape[-1], pre.resize)
    if nh * nw > FULL_RESIZE_PIXELS:
        x = resized_crop(img, pre.resize, pre.crop)  # [3, 224, 224] float32 in 0..255
    else:
        x = F.resize(img, [pre.resize], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        x = F.center_crop(x, [pre.crop, pre.crop]).to(torch.float32)  # [3, 224, 224]
    return F.normalize(x.div_(255), list(pre.mean), list(pre.std))


class Preparer:
    """Reads, decodes and transforms one batch of members on `device`."""

    def __init__(self, pre: Preprocess, device: torch.device, threads: int, *, cpu_decode: bool = False):
        self.pre, self.device = pre, device
        self.tar: tuple[Path, object] | None = None  # the one open shard
        on_cpu = cpu_decode or device.type == "cpu"
        self.pool = ThreadPoolExecutor(max(1, threads)) if on_cpu else None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.name = "libjpeg-turbo" if on_cpu else "nvjpeg"

    def _file(self, tar: Path):
        if self.tar is None or self.tar[0] != tar:
            self.close_tar()
            self.tar = (tar, open(tar, "rb"))  # noqa: SIM115 - closed when the next shard starts
        return self.tar[1]

    def _read(self, m: Member) -> torch.Tensor:
        tar, offset, size, index = m
        f, data = self._file(tar), bytearray(size)
        f.seek(offset)
        if (got := f.readinto(data)) != size:
            raise ShardFormatError(f"{tar}: sample {index} is cut short ({got} of the {size} bytes its "
                                   "index lists); the shard changed since it was made: shard it again")
        return torch.frombuffer(data, dtype=torch.uint8)

    def _one_cpu(self, item: tuple[int, torch.Tensor]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        index, data = item
        try:
            image = decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise DecodeError(index, self.name, str(e).strip().splitlines()[-1][:200]) from None
        return transform(image, self.pre)

    def _on_gpu(self, members: list[Member], data: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)  # nvJPEG, batched
        except RuntimeError:
            for m, d in zip(members, data):  # one image fails the batch: find it
                try:
                    decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device)
                except RuntimeError as e:
                    raise DecodeError(m[3], self.name, str(e).strip().splitlines()[-1][:200]) from None
            raise

    def __call__(self, members: list[Member]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """(images [b, 3, crop, crop] on the device, the event that marks them ready on CUDA)."""
        data = [self._read(m) for m in members]
        if self.pool is not None:
            items = [(m[3], d) for m, d in zip(members, data)]
            images = torch.stack(list(self.pool.map(self._one_cpu, items)))  # [b, 3, crop, crop]
            if self.stream is None:
                return images, None
            images = images.pin_memory()
        with torch.cuda.stream(self.stream):
            if self.pool is not None:
                images = images.to(self.device, non_blocking=True)
            else:
                images = torch.stack([transform(img, self.pre) for img in self._on_gpu(members, data)])
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return images, ready

    def close_tar(self) -> None:
        if self.tar is not None:
            self.tar[1].close()
            self.tar = None

    def close(self) -> None:
        self.close_tar()
        if self.pool is not None:
            self.pool.shutdown()


def _pad(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A short last batch padded to `batch_size` by repeating its last image (as DALI pads)."""
    if len(images) == batch_size:
        return images
    return torch.cat([images, images[-1:].expand(batch_size - len(images), -1, -1, -1)])


def torchvision_batches(tars: list[Path], idxs: list[Path], order: np.ndarray, *, pre: Preprocess,
                        batch_size: int, device: torch.device, threads: int,
                        cpu_decode: bool = False) -> Iterator[Batch]:
    """Every sample of `tars` once, in fixed-size batches; padding is marked with index -1."""
    members = jpeg_members(tars, idxs)
    check_order(np.array([m[3] for m in members], dtype=np.int64), order, 0)
    if len(members) != len(order):
        raise RuntimeError(f"the indexes list {len(members)} images, the manifest {len(order)}")
    chunks = [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    prepare = Preparer(pre, device, threads, cpu_decode=cpu_decode)
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
