"""Generate inputs for demos, benchmarks and tests: a labelled ImageFolder of real JPEGs with
class structure, and embeddings with the statistics of real ones.

    python -m bench.synthetic data/demo/images --classes 10 --train 24 --val 8 --broken 2

Each class has its own palette and stripe orientation under smooth random texture, so a
probe on any reasonable embedding learns something; images are ImageNet-like (500x375
by default, some portrait; `--imagenet-sizes`: sizes, qualities, progressive and greyscale
files spread as ImageNet's are). `--broken N` adds N undecodable files to train/ (a truncated
JPEG, a text file with a .JPEG name, ...), so the shard report has something to report.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_image(label: int, num_classes: int, rng: np.random.Generator, *,
                    size: tuple[int, int] = (500, 375)) -> Image.Image:
    """One RGB image [h, w, 3] of class `label`: tinted texture plus oriented stripes (`size` or,
    one time in five, its transpose)."""
    w, h = size if rng.random() > 0.2 else size[::-1]
    # classes overlap: a weak class colour under per-image colour noise, jittered stripe angles
    hue = label / num_classes + rng.normal(0, 0.08)
    base = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)]) * 30 + 128  # [3]
    base = base + rng.normal(0, 25, 3)
    texture = Image.fromarray(rng.integers(0, 256, (h // 25 + 2, w // 25 + 2, 3), dtype=np.uint8))
    texture = np.asarray(texture.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.pi * (label + rng.normal(0, 0.6)) / num_classes
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / (6 + 2 * (label % 3)))  # [h, w]
    contrast = rng.uniform(5, 35)
    img = 0.6 * texture + 0.4 * base + contrast * stripes[..., None] + rng.normal(0, 9, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int = 90, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **options)
    return buf.getvalue()


IMAGENET_SHORT_SIDES = (375, 375, 375, 333, 333, 357, 400, 281, 500)  # with 500 on the long side


def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    """(w, h) drawn as ImageNet's train images are spread: about two in three 500 pixels on the
    long side (mostly 500x375 or 375x500), a quarter smaller, a tail up to 2,000 pixels."""
    u = rng.random()
    if u < 0.65:
        long, short = 500, int(rng.choice(IMAGENET_SHORT_SIDES))
    elif u < 0.9:
        long = int(rng.integers(160, 500))
        short = int(long * rng.uniform(0.6, 1.0))
    else:
        long = int(np.exp(rng.uniform(np.log(501), np.log(2000))))
        short = int(long * rng.uniform(0.6, 0.8))
    return (long, short) if rng.random() < 0.75 else (short, long)


def imagenet_like_jpeg(label: int, classes: int, rng: np.random.Generator) -> bytes:
    """One JPEG as ImageNet's are: its size from imagenet_size, fine grain and quality 86-95
    (about 110 KB on average, as ImageNet's 140 GB over 1.28M files), 4:2:0, one in 25
    progressive and one in 50 greyscale."""
    w, h = imagenet_size(rng)
    img = synthetic_image(label, classes, rng, size=(max(w, h), min(w, h)))
    if img.size != (w, h):
        img = img.transpose(Image.Transpose.ROTATE_90)
    grain = np.asarray(img, dtype=np.float32) + rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))
    if rng.random() < 0.02:
        img = img.convert("L")
    return _jpeg(img, int(rng.integers(86, 96)), progressive=bool(rng.random() < 0.04))


def _broken(i: int, good: bytes) -> tuple[str, bytes]:
    kinds = [("truncated.JPEG", good[: len(good) // 3]), ("notes.JPEG", b"not an image\n" * 20),
             ("empty.JPEG", b"")]
    name, data = kinds[i % len(kinds)]
    return f"broken_{i}_{name}", data


def _class_folder(args: tuple) -> None:
    """Write one class folder of one split (a worker's job)."""
    folder, split, c, classes, per_class, seed, size = args
    rng = np.random.default_rng([seed, ("train", "val").index(split), c])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        data = imagenet_like_jpeg(c, classes, rng) if size == "imagenet" else \
            _jpeg(synthetic_image(c, classes, rng, size=size))
        (folder / f"{split}_{c:02d}_{i:04d}.JPEG").write_bytes(data)


def make_image_folder(root: Path, classes: int = 10, train: int = 24, *, val: int = 8, broken: int = 2,
                      seed: int = 0, size: tuple[int, int] | str = (500, 375), workers: int = 1) -> Path:
    """root/{train,val}/class_XX/*.JPEG; returns root. Images are `size` (w, h), some portrait,
    or with size "imagenet" as ImageNet's are (imagenet_like_jpeg). Deterministic for a seed, for
    any number of `workers` (each class folder has its own generator)."""
    from msnpipe.pool import ordered_map, worker_pool

    jobs = [(root / split / f"class_{c:02d}", split, c, classes, n, seed, size)
            for split, n in (("train", train), ("val", val)) if n for c in range(classes)]
    if workers > 1:
        with worker_pool(workers) as pool:
            list(ordered_map(pool, _class_folder, jobs))
    else:
        list(map(_class_folder, jobs))
    if not broken:
        return root
    good = next((root / "train").rglob("*.JPEG")).read_bytes()
    for i in range(broken):
        name, data = _broken(i, good)
        (root / "train" / f"class_{i % classes:02d}" / name).write_bytes(data)
    return root


def realistic_embeddings(classes: int, dim: int, per_class: dict[str, int], *, seed: int = 0,
                         separation: float = 0.6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (x [n, D] float32, y [n]) drawn like SSL embeddings of a hard dataset: features
    correlated with a power-law covariance spectrum (std of principal component k ~ 1/k, in a
    random basis) and class means that overlap heavily (`separation` in units of the noise).
    scikit-learn's logistic regression needs 60-110 L-BFGS iterations on these, as on real
    embeddings (uncorrelated, well-separated clusters converge in ~10)."""
    rng = np.random.default_rng(seed)
    scale = 1 / np.arange(1, dim + 1)  # std of each principal component
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    means = rng.normal(size=(classes, dim)) * scale * separation
    out = {}
    for split, n in per_class.items():
        y = rng.permutation(np.repeat(np.arange(classes), n))
        z = means[y] + rng.normal(size=(len(y), dim)) * scale  # [n, D] in the principal basis
        out[split] = ((z @ basis.T + 0.5).astype(np.float32), y)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=24, help="images per class in train/")
    p.add_argument("--val", type=int, default=8, help="images per class in val/")
    p.add_argument("--broken", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--imagenet-sizes", action="store_true", help="sizes and encodings as ImageNet's")
    a = p.parse_args(argv)
    make_image_folder(a.root, a.classes, a.train, val=a.val, broken=a.broken, seed=a.seed,
                      size="imagenet" if a.imagenet_sizes else (500, 375))
    print(f"{a.root}: {a.classes} classes, {a.train}+{a.val} images each, {a.broken} broken")


if __name__ == "__main__":
    main()
