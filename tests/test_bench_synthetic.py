"""bench.synthetic's ImageNet-like JPEGs are spread as ImageNet's are: sizes, bytes, encodings."""

import io

import numpy as np
from PIL import Image

from bench.synthetic import imagenet_like_jpeg, imagenet_size


def test_sizes_follow_imagenets_spread():
    rng = np.random.default_rng(0)
    sizes = [imagenet_size(rng) for _ in range(20_000)]
    long = np.array([max(s) for s in sizes])
    assert 0.6 < np.mean(long == 500) < 0.7  # most of ImageNet is 500 on the long side
    assert 0.12 < np.mean([s in ((500, 375), (375, 500)) for s in sizes]) < 0.5
    assert 0.65 < np.mean([w > h for w, h in sizes]) < 0.8  # landscape mostly
    assert long.max() <= 2000 and 0.03 < np.mean(long > 1000) < 0.1 and min(min(s) for s in sizes) >= 96


def test_files_average_about_110_kb_with_some_progressive_and_grey():
    rng = np.random.default_rng(1)
    data = [imagenet_like_jpeg(i % 10, 10, rng) for i in range(300)]
    assert 85_000 < np.mean([len(d) for d in data]) < 135_000  # ImageNet: 140 GB / 1.28M files
    images = [Image.open(io.BytesIO(d)) for d in data]
    assert {im.format for im in images} == {"JPEG"}
    assert 1 <= sum(im.mode == "L" for im in images) <= 15
    assert 3 <= sum(bool(im.info.get("progressive")) for im in images) <= 25
    for im in images[:20]:  # they decode whole
        im.load()
