"""embed.resize: the reference transform's geometry, and the resize of the kept region only,
against torchvision's Resize(256) + CenterCrop(224) of the whole image."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from embed.resize import crop_anchor, resized_crop, resized_size


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    """A uint8 [3, H, W] image with edges and texture (smooth images would hide filter errors)."""
    rng = np.random.default_rng(seed)
    small = torch.as_tensor(rng.integers(0, 256, (3, max(1, h // 4), max(1, w // 4)), dtype=np.uint8))
    img = F.resize(small, [h, w], interpolation=F.InterpolationMode.NEAREST)
    return img.clone()


def _torchvision(img: torch.Tensor) -> torch.Tensor:
    x = F.resize(img, [256], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(x, [224, 224]).to(torch.float32)


@pytest.mark.parametrize("h, w", [(375, 500), (500, 375), (300, 300), (257, 333), (131, 97), (224, 224),
                                  (480, 640), (1200, 1600), (3, 1000), (1000, 3), (4, 800), (13, 2000),
                                  (1, 5000), (256, 256), (255, 257)])
def test_the_kept_region_alone_gives_torchvisions_pixels_within_one_grey_level(h, w):
    img = _image(h, w, seed=h * 7 + w)
    got, want = resized_crop(img), _torchvision(img)
    assert got.shape == want.shape == (3, 224, 224)
    diff = (got - want).abs()  # torchvision rounds to uint8 between its two passes; this keeps floats
    assert diff.max() <= 1 and diff.mean() < 0.25, (diff.max(), diff.mean())


def test_the_geometry_is_torchvisions():
    assert resized_size(375, 500, 256) == (256, 341) and resized_size(500, 375, 256) == (341, 256)
    assert resized_size(1, 10000, 256) == (256, 2_560_000)
    assert crop_anchor(256, 341, 224) == (16, 58)  # round(58.5) == 58: half to even
    assert crop_anchor(256, 343, 224) == (16, 60)  # round(59.5) == 60
    img = _image(256, 343, seed=1)
    assert torch.equal(F.center_crop(img, [224, 224]), img[:, 16:240, 60:284])


def test_a_strip_needs_little_memory():
    """A 1x10000 strip: its full resize would be 256x2,560,000 (2 GB of uint8); this is not made."""
    import tracemalloc

    img = _image(1, 10000, seed=3)
    tracemalloc.start()  # numpy's taps; torch's own allocations are [3, 1, 224, K] and [3, 224, 224, K]
    out = resized_crop(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (3, 224, 224) and peak < 1 << 20
    row = img[:, 0, 4900:5100].to(torch.float32)  # the crop spans about 1 input pixel of the strip
    assert out.min() >= row.min() - 1 and out.max() <= row.max() + 1


@pytest.mark.parametrize("group_bytes", [1 << 27, 1])
def test_a_batch_of_many_sizes_gives_each_images_pixels(monkeypatch, group_bytes):
    """The batched path (the GPU's: gathers over padded groups of like sizes) gives each image
    exactly the pixels it gets alone, whatever shares its group (one group per image: 1 byte)."""
    import embed.resize
    from embed.resize import resized_crops

    monkeypatch.setattr(embed.resize, "GROUP_BYTES", group_bytes)
    shapes = [(375, 500), (500, 375), (131, 97), (3, 1000), (300, 300), (1200, 1600), (257, 333),
              (374, 499), (375, 500), (333, 500)]
    images = [_image(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    got = resized_crops(images)
    assert got.shape == (len(images), 3, 224, 224)
    for i, img in enumerate(images):
        assert torch.equal(got[i], resized_crops([img])[0]), shapes[i]
        assert (got[i] - _torchvision(img)).abs().max() <= 1, shapes[i]
    assert not torch.equal(got[0], got[8])  # the same size, other pixels: rows did not mix


def test_grey_images_come_out_as_three_equal_channels_and_normalized_as_the_reference():
    from embed.encoders import Preprocess
    from embed.resize import normalized, resized_crops

    grey = _image(200, 300, seed=9)[:1].expand(3, -1, -1).contiguous()
    x = normalized(resized_crops([grey]), Preprocess().mean, Preprocess().std)[0]
    want = F.normalize(_torchvision(grey) / 255, list(Preprocess().mean), list(Preprocess().std))
    assert (x - want).abs().max() <= 1 / 255 / 0.224 + 1e-4


@pytest.mark.gpu
def test_the_batched_resize_on_a_gpu_gives_the_cpus_pixels_exactly():
    """The same gathers, multiplies and adds in the same order: float32 on CUDA rounds as on the CPU."""
    from embed.resize import resized_crops

    shapes = [(375, 500), (500, 375), (131, 97), (3, 1000), (1200, 1600), (333, 500)]
    images = [_image(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    on_gpu = resized_crops([im.cuda() for im in images]).cpu()
    assert torch.equal(on_gpu, resized_crops(images))
