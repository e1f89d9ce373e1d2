"""embed.pipeline: both decoders' preprocessing against PIL + torchvision, indices, padding."""

import numpy as np
import pytest
import torch

from bench.reference import load_image
from embed.decode_dali import key_of
from embed.encoders import Preprocess
from embed.pipeline import batches
from shard.reader import open_split

ONE_GREY_LEVEL = 1 / 255 / 0.224 + 1e-4  # in normalized units


@pytest.fixture(scope="module")
def split(embed_shards):
    return open_split(embed_shards, "val")


def _all(split, batch, decoder="dali"):
    return list(batches(decoder, split.tar_paths(), split.idx_paths(), order=np.arange(split.num_samples),
                        pre=Preprocess(), batch_size=batch, device=torch.device("cpu"), threads=1))


@pytest.mark.parametrize("decoder", ["dali", "torchvision", "torchvision-cpu"])
def test_pixels_match_torchvision_within_one_grey_level(split, decoder):
    got = _all(split, batch=6, decoder=decoder)
    images = torch.cat([b.images for b in got])  # [B*, 3, 224, 224]
    indices = np.concatenate([b.indices for b in got])
    src = split.dir.parent.parent
    originals = {f"{p.parent.name}/{p.name}": p for p in src.rglob("*.JPEG")}
    for row, index in enumerate(indices):
        if index < 0:
            continue
        want = load_image(originals[split.paths()[index]])  # portrait, landscape, square, grey, EXIF
        assert (images[row] - want).abs().max() <= ONE_GREY_LEVEL, split.paths()[index]


@pytest.mark.parametrize("decoder", ["dali", "torchvision"])
def test_indices_come_from_keys_and_padding_is_marked(split, decoder):
    got = _all(split, batch=6, decoder=decoder)  # 17 samples: 6 + 6 + 5 real, 1 padded
    assert [len(b.indices) for b in got] == [6, 6, 6]
    indices = np.concatenate([b.indices for b in got])
    assert indices.tolist() == list(range(17)) + [-1]
    assert all(b.images.shape == (6, 3, 224, 224) for b in got)


@pytest.mark.gpu
def test_nvjpeg_pixels_stay_within_a_few_grey_levels_of_pil(split):
    got = list(batches("torchvision", split.tar_paths(), split.idx_paths(),
                       order=np.arange(split.num_samples),
                       pre=Preprocess(), batch_size=6, device=torch.device("cuda"), threads=2))
    images = torch.cat([b.images for b in got]).cpu()
    indices = np.concatenate([b.indices for b in got])
    src = split.dir.parent.parent
    originals = {f"{p.parent.name}/{p.name}": p for p in src.rglob("*.JPEG")}
    worst, mean = 0.0, []
    for row, index in enumerate(indices):
        if index >= 0:
            diff = (images[row] - load_image(originals[split.paths()[index]])).abs() * 255 * 0.224
            worst, mean = max(worst, float(diff.max())), mean + [float(diff.mean())]
    print(f"nvJPEG vs PIL: max {worst:.2f}, mean {np.mean(mean):.3f} grey levels")
    # nvJPEG is not libjpeg: measured on an H200, mean 1.37 and max 105 grey levels (local, at edges)
    assert np.mean(mean) <= 2.0


def test_key_of_source_info():
    info = np.frombuffer(b"/x/val-000001.tar:174080:00000042.jpg", dtype=np.uint8)
    assert key_of(info) == 42
