"""The DALI decoder: pipelines that read shards and produce model-ready batches with their
sample indices (`embed.pipeline.batches("dali", ...)`).

The transform is the reference path's (torchvision `Resize(256)` bilinear antialiased on
PIL, `CenterCrop(224)`, ImageNet mean/std), reproduced exactly where DALI allows:
the resized size is computed as torchvision does (`int(256 * long / short)`), the crop
anchor with Python's round-half-even, and EXIF orientation is not applied (PIL ignores it).
Decoding is `mixed` on a GPU (nvJPEG: the hardware JPEG engines take `hw_share` of each batch,
`--hw-share`, the CUDA decoder the rest, with libjpeg's chroma upsampling,
`jpeg_fancy_upsampling`, and size hints: msnpipe.decoders.dali_decode_options), `cpu`
otherwise. On a CPU pipeline, pixels agree with PIL/torchvision to within one grey level.

Each sample's index comes from its WebDataset key (`source_info` ends in `:<key>.jpg`),
so rows are written by index, never by arrival order. When DALI fails on a batch, its JPEGs
are decoded one by one to find the sample it cannot decode (`DecodeError`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from embed.batch import Batch, DecodeError, check_order, tiny_jpeg
from embed.encoders import Preprocess
from embed.views import ViewRecipe

PREFETCH = 2  # batches DALI prepares ahead: a failure may belong to either


def decoder_name(device: torch.device) -> str:
    """How msnpipe.decoders names the DALI decoder that runs on `device`."""
    return "dali-mixed" if device.type == "cuda" else "dali-cpu"


def unusable(device: torch.device) -> str | None:
    """Why DALI cannot decode on `device` here (it decodes a tiny JPEG to see), or None."""
    from msnpipe.decoders import decode_bytes

    try:
        bad = decode_bytes(decoder_name(device), [tiny_jpeg()])
    except Exception as e:  # an import or CUDA error: DALI is there but cannot run
        said = str(e).splitlines()[0][:160] if str(e) else ""
        return f"DALI cannot run on {device} ({type(e).__name__}: {said})"
    return f"DALI cannot decode on {device} ({bad[0]})" if bad else None


def pixels(data: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] CPU tensors of JPEGs as DALI's decoder decodes them on `device`."""
    from nvidia.dali import fn, pipeline_def, types

    from msnpipe.decoders import dali_decode_options

    mixed = device.type == "cuda"

    @pipeline_def(batch_size=len(data), num_threads=1, device_id=(device.index or 0) if mixed else None)
    def pipe():
        jpg = fn.external_source(name="jpg", dtype=types.UINT8)
        return fn.decoders.image(jpg, device="mixed" if mixed else "cpu", **dali_decode_options(mixed))

    p = pipe()
    p.build()
    p.feed_input("jpg", [np.frombuffer(d, dtype=np.uint8) for d in data])
    (out,) = p.run()
    out = out.as_cpu() if mixed else out
    return [torch.from_numpy(np.array(out[i])).permute(2, 0, 1).contiguous() for i in range(len(data))]


def _round_half_even_of_half(d):
    """Python's round(d / 2) for integer DALI nodes d >= 0 (torchvision's crop anchor)."""
    q = d // 2
    return q + (d - 2 * q) * (q - 2 * (q // 2))


def _resize_crop_normalize(jpg, images, pre: Preprocess):
    """The center crop of the image resized to pre.resize on its shorter side (torchvision's size
    rule and anchor), made in one resize of the region the crop keeps (roi_start/roi_end: the
    resized image is never made, so a long strip costs its crop), then normalized."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    shape = fn.peek_image_shape(jpg, dtype=types.INT64, adjust_orientation=False)  # [H, W, C]
    h, w = shape[0], shape[1]
    new_long = (pre.resize * dmath.max(h, w)) // dmath.min(h, w)
    wide = fn.cast(w > h, dtype=types.INT64)
    nh = wide * pre.resize + (1 - wide) * new_long
    nw = wide * new_long + (1 - wide) * pre.resize
    f = lambda v: fn.cast(v, dtype=types.FLOAT)  # noqa: E731
    top, left = f(_round_half_even_of_half(nh - pre.crop)), f(_round_half_even_of_half(nw - pre.crop))
    sy, sx = f(h) / f(nh), f(w) / f(nw)  # input pixels per resized pixel
    images = fn.resize(images, size=[pre.crop, pre.crop], roi_start=fn.stack(top * sy, left * sx),
                       roi_end=fn.stack((top + pre.crop) * sy, (left + pre.crop) * sx),
                       interp_type=types.INTERP_LINEAR, antialias=True)
    return fn.crop_mirror_normalize(
        images, mean=[255 * m for m in pre.mean], std=[255 * s for s in pre.std],
        dtype=types.FLOAT, output_layout="CHW")


def build_pipeline(tars: list[Path], idxs: list[Path], pre: Preprocess, *, batch_size: int,
                   device_id: int | None, threads: int, order: np.ndarray | None = None,
                   views: ViewRecipe | None = None, hw_share: float | None = None):
    """A DALI pipeline over `tars` yielding (images, source_info, *views) batches, last batch
    padded. Views need `order`, the sample indices in reading order, to draw their parameters;
    `hw_share` is the hardware JPEG decoder's share of each batch on a GPU (DALI's default: None)."""
    from nvidia.dali import fn, pipeline_def, types

    from embed.views import AUGMENTS, augmented, params_source
    from msnpipe.decoders import dali_decode_options

    aug = AUGMENTS[views.augment] if views else None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id,
                  prefetch_queue_depth=PREFETCH, exec_dynamic=True)
    def pipe():
        jpg = fn.readers.webdataset(
            paths=[str(p) for p in tars], index_paths=[str(p) for p in idxs], ext=["jpg"],
            missing_component_behavior="error", pad_last_batch=True, name="reader")
        info = fn.get_property(jpg, key="source_info")
        images = fn.decoders.image(jpg, device="cpu" if device_id is None else "mixed",
                                   **dali_decode_options(device_id is not None, hw_share))
        outputs = [_resize_crop_normalize(jpg, images, pre), info]
        for v in range(views.k if aug else 0):
            params = fn.external_source(params_source(order, batch_size, views.seed, view=v, aug=aug),
                                        batch=True, batch_info=True, dtype=types.FLOAT)
            outputs.append(augmented(jpg, images, params, pre=pre))
        return tuple(outputs)

    p = pipe()
    p.build()
    return p


def key_of(source_info: np.ndarray) -> int:
    """The sample index in a DALI source_info string `<tar>:<offset>:<key>.jpg`."""
    name = bytes(source_info).decode().rsplit(":", 1)[1]
    return int(name.split(".", 1)[0])


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList (CPU or GPU) as one torch tensor [B, ...] on `device`."""
    if hasattr(tensor_list, "as_cpu") and device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.asarray(tensor_list.as_tensor()))


def _culprit(tars: list[Path], idxs: list[Path], wanted: np.ndarray, device: torch.device,
             error: RuntimeError) -> DecodeError | RuntimeError:
    """The DecodeError of the first sample of `wanted` that DALI cannot decode alone, or `error`
    itself when each decodes (the failure was not a JPEG's)."""
    from embed.members import jpeg_members
    from msnpipe.decoders import Sample, decode_group

    members = {m[3]: m for m in jpeg_members(tars, idxs)}
    samples = [Sample(str(i), str(members[i][0]), members[i][1], members[i][2]) for i in wanted.tolist()]
    bad = decode_group(decoder_name(device), samples)
    return DecodeError(int(bad[0][0].key), decoder_name(device), bad[0][1]) if bad else error


def dali_batches(tars: list[Path], idxs: list[Path], order: np.ndarray, *, pre: Preprocess,
                 batch_size: int, device: torch.device, threads: int, views: ViewRecipe | None = None,
                 hw_share: float | None = None) -> Iterator[Batch]:
    """Every sample of `tars` once, in fixed-size batches; padding is marked with index -1."""
    device_id = (device.index or 0) if device.type == "cuda" else None
    pipe = build_pipeline(tars, idxs, pre, batch_size=batch_size, device_id=device_id, threads=threads,
                          order=order, views=views, hw_share=hw_share)
    for start in range(0, len(order), batch_size):
        try:
            images, info, *view_lists = pipe.run()
        except RuntimeError as e:
            raise _culprit(tars, idxs, order[start : start + PREFETCH * batch_size], device, e) from e
        indices = np.array([key_of(np.asarray(t)) for t in info], dtype=np.int64)
        real = min(batch_size, len(order) - start)
        check_order(indices[:real], order, start)
        indices[real:] = -1  # DALI repeats the last sample to fill the batch
        base = _to_torch(images, device)
        augmented = [_to_torch(v, device) for v in view_lists]
        if views and not augmented:  # augment none: K copies of the center crop
            augmented = [base] * views.k
        yield Batch(base, indices, augmented)
