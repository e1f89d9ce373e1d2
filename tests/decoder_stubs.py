"""Decoders for tests of msnpipe.decoders, as `tests.decoder_stubs:<name>`; light to import, since
every worker process that runs one imports this module."""

import ctypes


def crash_on_marked(data: list[bytes]) -> list[str | None]:
    """Takes down its process on any JPEG holding b"CRASH", as a decoder's segfault would, and
    decodes the rest."""
    if any(b"CRASH" in d for d in data):
        ctypes.string_at(0)  # a segfault: no exception, the process is gone
    return [None] * len(data)


def never_starts(data: list[bytes]) -> list[str | None]:
    raise ImportError("libfake.so: cannot open shared object file")


# -- embed.pipeline decoders (probe and pixels functions) -----------------------------------------


def runs_everywhere(device) -> None:
    return None


def libjpeg_pixels(data: list[bytes], device) -> list:
    """PIL's own pixels, as a decoder with libjpeg's arithmetic gives them."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(d)).convert("RGB")).transpose(2, 0, 1).copy())
            for d in data]


def one_level_off_pixels(data: list[bytes], device) -> list:
    """PIL's pixels one grey level off everywhere (as nvJPEG's own chroma upsampling is, on average)."""
    return [(p.to(int) + 1).clamp(0, 255).to(p.dtype) for p in libjpeg_pixels(data, device)]
