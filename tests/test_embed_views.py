"""embed.views: per-sample parameters are a function of (seed, index, view) alone."""

import numpy as np
import pytest

from embed.views import AUGMENTS, BLUR_SIGMA, FLIP, HUE, SAT, SCALE, params_source, view_params


def test_parameters_depend_only_on_seed_index_view():
    aug = AUGMENTS["msn"]
    a = view_params(0, 17, 1, aug=aug)
    assert np.array_equal(a, view_params(0, 17, 1, aug=aug))
    assert not np.array_equal(a, view_params(0, 17, 0, aug=aug))
    assert not np.array_equal(a, view_params(1, 17, 1, aug=aug))
    assert not np.array_equal(a, view_params(0, 18, 1, aug=aug))


def test_parameter_ranges_and_rates():
    rows = np.stack([view_params(3, i, 0, aug=AUGMENTS["simclr"]) for i in range(4000)])
    assert rows[:, SCALE].min() >= 0.08 and rows[:, SCALE].max() <= 1.0
    assert abs(rows[:, FLIP].mean() - 0.5) < 0.03
    assert abs((rows[:, SAT] == 0).mean() - 0.2) < 0.03  # grayscale p 0.2
    assert abs((rows[:, BLUR_SIGMA] > 0).mean() - 0.5) < 0.03
    assert 0.19 * 360 < np.abs(rows[:, HUE]).max() <= 0.2 * 360  # hue jitter 0.2 of the circle, in degrees
    assert abs(rows[:, HUE].mean()) < 3 and (rows[:, HUE] > 0).mean() == pytest.approx(0.4, abs=0.03)
    msn = np.stack([view_params(3, i, 0, aug=AUGMENTS["msn"]) for i in range(500)])
    assert msn[:, SCALE].min() >= 0.3


def test_source_follows_the_reading_order_and_pads_like_the_reader():
    class Info:
        def __init__(self, iteration):
            self.iteration = iteration

    order = np.array([8, 9, 10, 11, 12])
    src = params_source(order, 3, seed=4, view=1, aug=AUGMENTS["msn"])
    second = src(Info(1))  # samples 11, 12, then 12 again as padding
    assert second.shape == (3, 10)
    assert np.array_equal(second[0], view_params(4, 11, 1, aug=AUGMENTS["msn"]))
    assert np.array_equal(second[2], view_params(4, 12, 1, aug=AUGMENTS["msn"]))


def _gradient_jpeg(w: int = 400, h: int = 300) -> bytes:
    """Red rises left to right, green top to bottom: a view's colours say where it was cut."""
    import io

    from PIL import Image
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    rgb = np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=98, subsampling=0)
    return buf.getvalue()


def _views_of(jpeg: bytes, rows: np.ndarray) -> np.ndarray:
    """The DALI view graph (embed.views.augmented) of one image under each parameter row, back in
    0..255 pixels [V, 224, 224, 3]."""
    from nvidia.dali import fn, pipeline_def, types

    from embed.encoders import Preprocess
    from embed.views import augmented
    pre, n = Preprocess(), len(rows)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        jpg = fn.external_source(lambda: [np.frombuffer(jpeg, np.uint8)] * n, batch=True)
        params = fn.external_source(lambda: list(rows.astype(np.float32)), batch=True, dtype=types.FLOAT)
        images = fn.decoders.image(jpg, device="cpu", output_type=types.RGB)
        return augmented(jpg, images, params, pre=pre)

    p = pipe()
    p.build()
    out = np.stack([np.asarray(t) for t in p.run()[0]])  # [V, 3, 224, 224], normalized
    return (out.transpose(0, 2, 3, 1) * np.array(pre.std) + np.array(pre.mean)) * 255


@pytest.mark.parametrize("augment", ["msn", "simclr"])
def test_each_view_is_the_drawn_window_flipped_as_drawn(augment):
    from embed.views import BRIGHT, CONTRAST, LOG_RATIO, X_FRAC, Y_FRAC
    w, h = 400, 300
    rows = np.stack([view_params(11, i, 0, aug=AUGMENTS[augment]) for i in range(12)])
    rows[:, [BRIGHT, CONTRAST, SAT]], rows[:, [HUE, BLUR_SIGMA]] = 1.0, 0.0  # colour untouched
    assert 0 < rows[:, FLIP].sum() < len(rows)  # some views flipped, some not
    views = _views_of(_gradient_jpeg(w, h), rows)
    for row, view in zip(rows, views):
        area, ratio = row[SCALE] * w * h, np.exp(row[LOG_RATIO])
        cw, ch = min(np.sqrt(area * ratio), w), min(np.sqrt(area / ratio), h)
        x0, y0 = row[X_FRAC] * (w - cw), row[Y_FRAC] * (h - ch)
        left, right = 255 * x0 / (w - 1), 255 * (x0 + cw) / (w - 1)  # red at the window's sides
        top, bottom = 255 * y0 / (h - 1), 255 * (y0 + ch) / (h - 1)  # green at its top and bottom
        if row[FLIP]:
            left, right = right, left
        red, green = view[..., 0], view[..., 1]
        assert abs(red[:, 3].mean() - left) < 6 and abs(red[:, -4].mean() - right) < 6, (row, red[0])
        assert abs(green[3].mean() - top) < 6 and abs(green[-4].mean() - bottom) < 6, (row, green[:, 0])
