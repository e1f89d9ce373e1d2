"""python -m shard on files nobody here wrote: the 205 JPEGs of public decoders' test suites
(tests/data/public-jpegs, SOURCES.md: Pillow, libjpeg-turbo, jpeg-decoder), laid out as one
class-folder tree. What shard keeps passes the structural check and every decoder decodes; what
only a lenient decoder reads is re-encoded with the reason; what PIL decodes is never skipped;
`shard.verify --decode` and `python -m embed` finish with every decoder."""

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embed.__main__ import main as embed_main
from embed.store import open_embeddings
from shard.__main__ import main as shard_main
from shard.jpeg import inspect
from shard.reader import open_split, read_index
from shard.scan import IMG_EXTENSIONS
from shard.verify import main as verify_main

PUBLIC = Path(__file__).parent / "data" / "public-jpegs"


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    out = tmp_path_factory.mktemp("public")
    assert shard_main([str(PUBLIC), str(out), "--split", "train", "--samples-per-shard", "40",
                       "--workers", "2"]) == 0
    return out


def _pil_decodes(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
        return True
    except Exception:
        return False


def _members(split) -> dict[int, bytes]:
    out = {}
    for tar, idx in zip(split.tar_paths(), split.idx_paths()):
        blob = tar.read_bytes()
        out |= {int(k): blob[o : o + n] for k, ext, o, n in read_index(idx) if ext == "jpg"}
    return out


def test_every_file_has_a_verdict_and_every_kind_occurs(public):
    split = open_split(public, "train")
    files = [p for p in PUBLIC.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    assert len(files) == 205 == split.num_samples + len(split.skipped)
    assert split.num_samples > 90 and len(split.repaired) > 15 and len(split.skipped) > 90
    reasons = " ".join(r["action"] for r in split.repaired)
    for kind in ("bytes between segments", "a stuffed FF00", "arithmetic coding", "an AC scan of component 1 "
                 "before its DC scan", "CMYK converted"):
        assert kind in reasons, kind


def test_what_is_kept_passes_the_structural_check_and_what_is_repaired_is_sound(public):
    split = open_split(public, "train")
    repaired = {r["path"] for r in split.repaired}
    members, paths = _members(split), split.paths()
    for i, data in members.items():
        size, problem = inspect(data)
        assert size is not None, (paths[i], problem)  # kept and re-encoded alike
        if paths[i] not in repaired:
            assert data == (PUBLIC / paths[i]).read_bytes(), paths[i]  # kept byte for byte


def test_what_pil_decodes_is_never_skipped(public):
    split = open_split(public, "train")
    for s in split.skipped:
        assert not _pil_decodes(PUBLIC / s["path"]) or s["reason"].startswith("decompression bomb"), s


def test_fast_and_full_give_the_same_shards(public, tmp_path):
    assert shard_main([str(PUBLIC), str(tmp_path), "--split", "train", "--samples-per-shard", "40",
                       "--workers", "2", "--validate", "full"]) == 0
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar", "samples.tsv"):
        assert (tmp_path / "train" / name).read_bytes() == (public / "train" / name).read_bytes(), name
    import json

    fast, full = (json.loads((d / "train" / "manifest.json").read_text()) for d in (public, tmp_path))
    assert fast["skipped"] == full["skipped"] and fast["repaired"] == full["repaired"]


def test_verify_decodes_every_sample_with_every_decoder(public, caplog):
    assert verify_main([str(public), "--decode", "--workers", "2"]) == 0
    assert "train: ok, every JPEG decoded by libjpeg-turbo, dali-cpu, nvimgcodec-cpu" in caplog.text


@pytest.mark.parametrize("decoder", ["dali", "torchvision", "torchvision-cpu"])
def test_embed_finishes_with_every_decoder(public, tiny_encoders, tmp_path, decoder):
    out = tmp_path / "s.zarr"
    assert embed_main([str(public), "--split", "train", "--encoder", "tiny_a", "--weights", "random", "--out",
                       str(out), "--decoder", decoder, "--batch-size", "16", "--threads", "2"]) == 0
    e = open_embeddings(out, "tiny_a", "train")
    assert e.shape[0] == open_split(public, "train").num_samples
    assert np.isfinite(np.asarray(e.embeddings[:])).all()


def test_repaired_pixels_are_what_pil_reads_from_the_original(public):
    """A repaired lenient JPEG is PIL's decode of the original, re-encoded at quality 95, 4:4:4."""
    split = open_split(public, "train")
    members, paths = _members(split), split.paths()
    for r in split.repaired:
        if not r["action"].startswith("lenient JPEG"):
            continue
        i = paths.index(r["path"])
        want = np.asarray(Image.open(PUBLIC / r["path"]).convert("RGB"), dtype=np.float32)
        got = np.asarray(Image.open(io.BytesIO(members[i])).convert("RGB"), dtype=np.float32)
        assert got.shape == want.shape and np.abs(got - want).mean() < 3.0, r["path"]
