"""Augmented views on DALI, reproducible per sample: --views K --augment msn|simclr|none.

Every random choice of view v of sample i is drawn in numpy from
`default_rng([seed, i, v])` and handed to DALI as per-sample arguments (DALI's own random
operators are not used), so the same seed and shards give the same views for any batch
size or number of processes. The transform, after MSN's and SimCLR's:

    random resized crop to 224 (scale 0.3-1 for msn, 0.08-1 for simclr; aspect 3/4-4/3;
    a window too large for the image is clamped instead of re-drawn), horizontal flip (p 0.5),
    colour jitter (p 0.8; brightness, contrast, saturation 0.8, hue 0.2), grayscale (p 0.2),
    gaussian blur (p 0.5, sigma 0.1-2), ImageNet mean/std.

`none` gives K copies of the reference's center crop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embed.encoders import Preprocess


@dataclass(frozen=True)
class ViewRecipe:
    """How a run makes views: K per sample, one augmentation (a key of AUGMENTS), a seed.
    (`Config.views` is K; `Batch.views` the K tensors a decoder made; a store's `views` array
    [N, K, D] their rows.)"""

    k: int
    augment: str
    seed: int


# columns of a sample's parameter row
SCALE, LOG_RATIO, X_FRAC, Y_FRAC, FLIP, BRIGHT, CONTRAST, SAT, HUE, BLUR_SIGMA = range(10)
NUM_PARAMS = 10


@dataclass(frozen=True)
class Augment:
    """The random transform of one view."""

    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, sat, hue
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


AUGMENTS: dict[str, Augment | None] = {
    "msn": Augment(scale=(0.3, 1.0)),
    "simclr": Augment(scale=(0.08, 1.0)),
    "none": None,
}


def view_params(seed: int, index: int, view: int, *, aug: Augment) -> np.ndarray:
    """The parameter row [NUM_PARAMS] float32 of view `view` of sample `index`."""
    rng = np.random.default_rng([seed, index, view])
    u = rng.random(16)
    b, c, s, h = aug.jitter
    jitter = u[5] < aug.jitter_p
    gray = u[10] < aug.gray_p
    blur = u[11] < aug.blur_p
    row = np.empty(NUM_PARAMS, dtype=np.float32)
    row[SCALE] = aug.scale[0] + u[0] * (aug.scale[1] - aug.scale[0])
    row[LOG_RATIO] = math.log(aug.ratio[0]) + u[1] * (math.log(aug.ratio[1]) - math.log(aug.ratio[0]))
    row[X_FRAC], row[Y_FRAC] = u[2], u[3]
    row[FLIP] = float(u[4] < aug.flip_p)
    row[BRIGHT] = 1 + (2 * u[6] - 1) * b if jitter else 1.0
    row[CONTRAST] = 1 + (2 * u[7] - 1) * c if jitter else 1.0
    row[SAT] = (1 + (2 * u[8] - 1) * s if jitter else 1.0) * (0.0 if gray else 1.0)
    row[HUE] = (2 * u[9] - 1) * h * 360 if jitter else 0.0  # degrees, as DALI takes it
    row[BLUR_SIGMA] = aug.blur_sigma[0] + u[12] * (aug.blur_sigma[1] - aug.blur_sigma[0]) if blur else 0.0
    return row


def params_source(order: np.ndarray, batch: int, seed: int, *, view: int, aug: Augment) -> Callable:
    """An external_source callback: iteration -> [batch, NUM_PARAMS] for the samples the reader
    yields in that batch (`order`, padded by repeating the last, as the reader pads)."""
    def source(info) -> np.ndarray:
        idx = order[info.iteration * batch : (info.iteration + 1) * batch]
        idx = np.concatenate([idx, np.full(batch - len(idx), order[-1])]) if len(idx) < batch else idx
        return np.stack([view_params(seed, int(i), view, aug=aug) for i in idx])

    return source


def augmented(jpg, images, params, *, pre: Preprocess):
    """DALI graph of one view: crop, resize, jitter, grey, blur, flip, normalize -> [3, 224, 224]."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    shape = fn.peek_image_shape(jpg, dtype=types.INT64, adjust_orientation=False)
    h, w = fn.cast(shape[0], dtype=types.FLOAT), fn.cast(shape[1], dtype=types.FLOAT)
    area = params[SCALE] * h * w
    ratio = dmath.exp(params[LOG_RATIO])
    cw = dmath.min(dmath.sqrt(area * ratio), w)
    ch = dmath.min(dmath.sqrt(area / ratio), h)
    x0, y0 = params[X_FRAC] * (w - cw), params[Y_FRAC] * (h - ch)
    anchor = fn.cast(fn.stack(dmath.floor(y0), dmath.floor(x0)), dtype=types.INT32)
    size = fn.cast(fn.stack(dmath.max(dmath.floor(ch), 1.0), dmath.max(dmath.floor(cw), 1.0)),
                   dtype=types.INT32)
    images = fn.slice(images, anchor, size, axes=[0, 1])
    images = fn.resize(images, resize_x=float(pre.crop), resize_y=float(pre.crop),
                       interp_type=types.INTERP_LINEAR, antialias=True)
    images = fn.color_twist(images, brightness=params[BRIGHT], contrast=params[CONTRAST],
                            saturation=params[SAT], hue=params[HUE])
    sigma = params[BLUR_SIGMA]
    blurred = fn.gaussian_blur(images, sigma=dmath.max(sigma, 0.01))  # 0.01: a 1-tap identity
    return fn.crop_mirror_normalize(
        blurred, mirror=fn.cast(params[FLIP], dtype=types.INT32), mean=[255 * m for m in pre.mean],
        std=[255 * s for s in pre.std], dtype=types.FLOAT, output_layout="CHW")
