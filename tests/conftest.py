"""Shared fixtures: tiny image folders written to tmp_path, one file per kind of input."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, with the reason, on a machine without CUDA."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def installed_decoders() -> list[str]:
    """The embed decoders that can run here (DALI is optional on a GPU machine)."""
    import importlib.util
    found = ["torchvision", "torchvision-cpu"]
    optional = [name for name, module in (("dali", "nvidia.dali"), ("nvimgcodec", "nvidia.nvimgcodec"))
                if importlib.util.find_spec(module)]
    return optional + found


def pixels(w: int, h: int, seed: int, mode: str = "RGB") -> np.ndarray:
    """A smooth random image (JPEG-friendly), [h, w, C] uint8."""
    rng = np.random.default_rng(seed)
    c = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, c), dtype=np.uint8)
    img = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    return img[..., 0] if mode == "L" else img


def jpeg_bytes(w: int = 64, h: int = 48, seed: int = 0, mode: str = "RGB", **save) -> bytes:
    """JPEG bytes of a `pixels` image; `save` goes to PIL (quality, exif, ...)."""
    out = io.BytesIO()
    Image.fromarray(pixels(w, h, seed, mode)).save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def image_bytes(fmt: str, seed: int = 0, w: int = 64, h: int = 48) -> bytes:
    """Bytes of a non-JPEG or unusual image: png-rgba, png-palette, png16, webp, bmp, tiff,
    gif, cmyk-jpeg."""
    out = io.BytesIO()
    rgb = Image.fromarray(pixels(w, h, seed))
    if fmt == "png-rgba":
        Image.fromarray(pixels(w, h, seed, "RGBA")).save(out, format="PNG")
    elif fmt == "png-palette":
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        pal.info["transparency"] = 0
        pal.save(out, format="PNG", transparency=0)
    elif fmt == "png16":
        arr = (pixels(w, h, seed, "L").astype(np.uint16) * 257)
        Image.fromarray(arr).save(out, format="PNG")
    elif fmt == "cmyk-jpeg":
        rgb.convert("CMYK").save(out, format="JPEG", quality=90)
    else:
        rgb.save(out, format={"webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}[fmt])
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_folder(root: Path, classes: list[str], per_class: int, w: int = 64, h: int = 48,
                seed: int = 0) -> Path:
    """root/<class>/<i>.JPEG, valid RGB JPEGs only."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write(root / name / f"img_{i:03d}.JPEG", jpeg_bytes(w, h, seed + 1000 * c + i))
    return root


def make_zoo(split_dir: Path) -> dict[str, str]:
    """A split with one file of every kind the shard table names; returns name -> expected fate."""
    fates = {}

    def put(rel: str, data: bytes, fate: str) -> None:
        write(split_dir / rel, data)
        fates[rel] = fate

    put("cat/plain rgb.JPEG", jpeg_bytes(seed=1), "keep")
    put("cat/gray.jpg", jpeg_bytes(seed=2, mode="L"), "keep")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    put("cat/rotated.exif.jpeg", jpeg_bytes(seed=3, exif=exif.tobytes()), "keep")
    put("cat/ünïcödé näme.JPEG", jpeg_bytes(seed=4), "keep")
    put("cat/nested/deeper.JPEG", jpeg_bytes(seed=5), "keep")
    put("cat/rgba.png", image_bytes("png-rgba", 6), "repair")
    put("cat/palette.png", image_bytes("png-palette", 7), "repair")
    put("cat/sixteen.png", image_bytes("png16", 8), "repair")
    put("dog/a.webp", image_bytes("webp", 9), "repair")
    put("dog/b.bmp", image_bytes("bmp", 10), "repair")
    put("dog/c.tif", image_bytes("tiff", 11), "repair")
    put("dog/gif inside.JPEG", image_bytes("gif", 12), "repair")
    put("dog/png inside.JPEG", image_bytes("png-rgba", 13), "repair")
    put("dog/cmyk.JPEG", image_bytes("cmyk-jpeg", 14), "repair")
    put("dog/truncated.JPEG", jpeg_bytes(seed=15)[:400], "skip")
    put("dog/empty.JPEG", b"", "skip")
    put("dog/text.jpg", b"this is not an image\n" * 10, "skip")
    put("dog/plain.JPEG", jpeg_bytes(seed=16), "keep")
    os.symlink(split_dir / "nowhere.JPEG", split_dir / "dog" / "dangling.JPEG")
    fates["dog/dangling.JPEG"] = "skip"
    for ignored in ("cat/.DS_Store", "cat/._plain rgb.JPEG", "dog/notes.txt", "dog/image.gif"):
        write(split_dir / ignored, jpeg_bytes(seed=17))
    write(split_dir / ".ipynb_checkpoints" / "x.JPEG", jpeg_bytes(seed=18))
    write(split_dir / "dog" / ".hidden_dir" / "y.JPEG", jpeg_bytes(seed=19))
    return fates


# -- embed fixtures: shards of varied images and a random ViT-S/16 in the official layout ----

EMBED_SIZES = [(500, 375), (375, 500), (300, 300), (333, 257), (257, 333), (640, 480), (97, 131)]


@pytest.fixture(scope="session")
def embed_shards(tmp_path_factory) -> Path:
    """OUT of python -m shard: split `val`, 3 classes x 5 images of varied sizes (+1 grey,
    +1 EXIF-rotated), 4 samples per shard, so the last shard is partial."""
    from PIL import ImageFilter

    from shard.__main__ import main as shard_main

    root = tmp_path_factory.mktemp("embed_src")
    rng = np.random.default_rng(7)
    for c in range(3):
        for i in range(5):
            w, h = EMBED_SIZES[(c * 5 + i) % len(EMBED_SIZES)]
            low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            img = low.resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL)
            write(root / "val" / f"class{c}" / f"{i}.JPEG", _jpeg(img))
    write(root / "val" / "class1" / "grey.JPEG", jpeg_bytes(200, 150, seed=3, mode="L"))
    exif = Image.Exif()
    exif[0x0112] = 6
    write(root / "val" / "class2" / "rotated.JPEG", jpeg_bytes(260, 180, seed=4, exif=exif.tobytes()))
    out = tmp_path_factory.mktemp("embed_shards")
    assert shard_main([str(root), str(out), "--splits", "val", "--samples-per-shard", "4",
                       "--workers", "1"]) == 0
    return out


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="session")
def vits_checkpoint(tmp_path_factory) -> Path:
    """weights/vits16_800ep.pth.tar: random, in the exact official MSN layout."""
    from embed.checkpoint import save_random_checkpoint
    from embed.encoders import get_spec

    folder = tmp_path_factory.mktemp("weights")
    return save_random_checkpoint(folder / "vits16_800ep.pth.tar", get_spec("vits16_800ep"), seed=1)


# -- probe fixtures: stores of synthetic embeddings, built through embed.from_npy ----------


def gaussian_mixture(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 2.5):
    """(x [n*K, D] float32, y [n*K]) with class means drawn once per call's seed."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (classes, dim)) * spread / np.sqrt(dim) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    x = means[y] + rng.normal(0, 1, (len(y), dim))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


def make_store(root: Path, encoder: str = "toy", classes: int = 10, dim: int = 16,
               train_per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> Path:
    """A complete store with train/ and val/ of a Gaussian mixture, via embed.from_npy."""
    from embed.from_npy import main as from_npy_main

    rng_means = np.random.default_rng(seed).normal(0, 1, (classes, dim)) * 1.5
    folder = root / "npy"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", train_per_class, seed + 1), ("val", test_per_class, seed + 2)):
        rng = np.random.default_rng(s)
        y = rng.permutation(np.repeat(np.arange(classes), n))
        x = (rng_means[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32)
        np.save(folder / f"embeddings_{encoder}_{split}.npy", x)
        np.save(folder / f"labels_{split}.npy", y)
    store = root / "store.zarr"
    assert from_npy_main([str(folder), "--encoder", encoder, "--out", str(store)]) == 0
    return store


@pytest.fixture
def tiny_encoders(monkeypatch):
    """Two tiny ViTs added to the registry, so compile, views and multi-encoder runs stay cheap."""
    from embed.encoders import ENCODERS, EncoderSpec

    tiny = {"tiny_a": EncoderSpec("tiny_a", "test_tiny", patch=16, dim=32, depth=2, heads=2),
            "tiny_b": EncoderSpec("tiny_b", "test_tiny", patch=32, dim=48, depth=1, heads=3)}
    monkeypatch.setattr("embed.encoders.ENCODERS", ENCODERS | tiny)
    return tiny


def random_store(root: Path, n_train: int, n_val: int, dim: int, classes: int = 10, seed: int = 0,
                 encoder: str = "r") -> Path:
    """A store of pure-noise features with random labels (chance-level for any probe)."""
    from embed.from_npy import main as from_npy_main

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        np.save(root / f"embeddings_{encoder}_{split}.npy", rng.normal(size=(n, dim)).astype(np.float32))
        np.save(root / f"labels_{split}.npy", rng.integers(0, classes, n))
    assert from_npy_main([str(root), "--encoder", encoder, "--out", str(root / "s.zarr")]) == 0
    return root / "s.zarr"


def replace_jpeg(split_dir: Path, index: int, data: bytes) -> None:
    """Put `data` in place of sample `index`'s JPEG in a finished split, rewriting its tar, index
    and manifest record as the shard stage writes them, so the split stays self-consistent (for
    shards made by other tools, or by versions of shard that kept what some decoder refuses)."""
    import json
    from dataclasses import asdict

    from shard.reader import MANIFEST, open_split, read_index
    from shard.writer import write_tar

    split = open_split(split_dir.parent, split_dir.name)
    s = index // split.samples_per_shard
    tar, blob = split.tar_paths()[s], split.tar_paths()[s].read_bytes()
    members: dict[str, dict[str, bytes]] = {}
    for key, ext, offset, size in read_index(split.idx_paths()[s]):
        members.setdefault(key, {})[ext] = blob[offset : offset + size]
    record = write_tar(tar, [(k, data if int(k) == index else m["jpg"], m["cls"].decode())
                               for k, m in members.items()])
    manifest = json.loads((split_dir / MANIFEST).read_text())
    manifest["shards"][s] = asdict(record)
    (split_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def lenient_jpeg(seed: int = 0, w: int = 64, h: int = 48) -> bytes:
    """A JPEG with two bytes between two header segments: libjpeg (PIL, torchvision) only warns,
    DALI's and nvImageCodec's parser refuse it ("Invalid marker")."""
    data = jpeg_bytes(w, h, seed=seed)
    at = data.index(b"\xff\xdb")
    return data[:at] + b"\x00\x12" + data[at:]


def as_older_version(store_path: Path, encoder: str, split: str):
    """The group opened for writing with its digests and layout removed, as a version before them
    made it: tests that damage rows or paths by hand (which the digests would catch first) see the
    checks behind them."""
    from embed.store import open_group

    g = open_group(store_path, encoder, split, mode="a")
    del g["digests"]
    del g.attrs["layout"]
    return g


# -- object storage: a real S3 API on a local port ----------------------------------------------

S3_REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (a real S3 API over HTTP) on a free local port, with credentials enforced:
    the tests use an IAM user's key made on it; a wrong key is refused as S3 refuses it."""
    import json
    import logging
    import socket

    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"  # the IAM calls below; every later request is signed
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="boot", aws_secret_access_key="boot",
                       region_name=S3_REGION)
    iam.create_user(UserName="tests")
    iam.put_user_policy(UserName="tests", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="tests")["AccessKey"]
    yield {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"],
           "server": server}
    server.stop()


def s3_environment(s3_server: dict) -> dict[str, str]:
    """The environment a process needs to reach the test server (as a user's would: AWS's own variables)."""
    return {"AWS_ACCESS_KEY_ID": s3_server["key"], "AWS_SECRET_ACCESS_KEY": s3_server["secret"],
            "AWS_ENDPOINT_URL": s3_server["endpoint"], "AWS_DEFAULT_REGION": S3_REGION}


_BUCKETS = iter(range(10**6))


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path) -> str:
    """A fresh bucket on the test server, as `s3://<bucket>`; this test's environment reaches it,
    and remote splits are cached under tmp_path."""
    import boto3
    import s3fs

    for name, value in s3_environment(s3_server).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("MSNPIPE_CACHE", str(tmp_path / "cache"))
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"msnpipe-{next(_BUCKETS)}"
    client = boto3.client("s3", endpoint_url=s3_server["endpoint"], aws_access_key_id=s3_server["key"],
                          aws_secret_access_key=s3_server["secret"], region_name=S3_REGION)
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()


def tree_bytes(root) -> dict[str, bytes]:
    """{relative name: bytes} of every file under a folder or a URL (for comparing outputs)."""
    from msnpipe import remote

    if remote.is_url(root):
        fs, path = remote.filesystem(str(root))
        return {name[len(path) + 1:]: fs.cat_file(name) for name in fs.find(path)}
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
