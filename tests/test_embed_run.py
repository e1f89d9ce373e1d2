"""python -m embed end to end: agreement with the reference path, resume, torchrun, refusals."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.reference import load_image, reference_vit
from embed.__main__ import main
from embed.store import open_embeddings
from shard.reader import open_split
from tests.conftest import installed_decoders

ROOT = Path(__file__).parents[1]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def reference_rows(embed_shards, vits_checkpoint):
    """[N, 384] from the reference path over the original files, in samples.tsv order."""
    split = open_split(embed_shards, "val")
    src = Path(split.dir).parent.parent
    files = [p for p in src.rglob("*.JPEG")]
    by_rel = {f"{p.parent.name}/{p.name}": p for p in files}
    x = torch.stack([load_image(by_rel[rel]) for rel in split.paths()])
    with torch.no_grad():
        return reference_vit(vits_checkpoint).forward_blocks(x).numpy()


@pytest.fixture(scope="module")
def store(embed_shards, vits_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "e.zarr"
    assert main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep",
                 "--weights", str(vits_checkpoint), "--out", str(out), "--batch-size", "5"]) == 0
    return out


def test_rows_match_the_reference_path(store, reference_rows, embed_shards):
    e = open_embeddings(store, "vits16_800ep", "val")
    rows = np.asarray(e.embeddings[:])
    assert rows.shape == reference_rows.shape == (17, 384)
    cos = cosines(rows, reference_rows)
    assert cos.min() >= 0.99, cos
    off_diagonal = cosines(reference_rows, np.roll(reference_rows, 1, axis=0))
    assert off_diagonal.max() < 0.97  # different images differ: the 0.99 bar means something
    assert e.labels.tolist() == open_split(embed_shards, "val").labels().tolist()
    assert e.paths == open_split(embed_shards, "val").paths()


@pytest.mark.parametrize("decoder", ["torchvision", "nvimgcodec"])
def test_other_decoders_rows_match_the_reference_path(embed_shards, vits_checkpoint, reference_rows,
                                                      store, tmp_path, decoder):
    out = tmp_path / "tv.zarr"
    assert main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights",
                 str(vits_checkpoint), "--out", str(out), "--batch-size", "5",
                 "--decoder", decoder]) == 0
    e = open_embeddings(out, "vits16_800ep", "val")
    rows = np.asarray(e.embeddings[:])
    assert cosines(rows, reference_rows).min() >= 0.99999
    dali = np.asarray(open_embeddings(store, "vits16_800ep", "val").embeddings[:])
    assert cosines(dali, reference_rows).min() >= 0.99999
    assert e.attrs["identity"]["decoder"] == decoder


def test_views_need_the_dali_decoder(embed_shards, tmp_path, caplog):
    assert main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights", "random",
                 "--out", str(tmp_path / "v.zarr"), "--decoder", "torchvision", "--views", "2"]) == 1
    assert "--views needs a decoder that makes augmented views (dali), not --decoder torchvision" \
        in caplog.text
    assert not (tmp_path / "v.zarr").exists()  # refused before anything was made


def test_store_attributes(store, vits_checkpoint):
    a = open_embeddings(store, "vits16_800ep", "val").attrs
    assert a["complete"] is True and a["completed_shards"] == 5 and a["num_shards"] == 5
    assert (a["architecture"], a["kind"], a["precision"], a["batch_size"]) == (
        "deit_small", "cls_prenorm", "fp32", 5)
    from embed.checkpoint import sha256_file
    assert a["weights_sha256"] == sha256_file(vits_checkpoint) and a["random_weights"] is True
    assert a["preprocessing"]["resize"] == 256 and a["versions"]["torch"] == torch.__version__


def test_padding_never_leaks(embed_shards, vits_checkpoint, store, tmp_path):
    # 17 samples, batch 7: the last batch has 4 padded copies of sample 16
    out = tmp_path / "p.zarr"
    assert main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights",
                 str(vits_checkpoint), "--out", str(out), "--batch-size", "7"]) == 0
    a = np.asarray(open_embeddings(out, "vits16_800ep", "val").embeddings[:])
    b = np.asarray(open_embeddings(store, "vits16_800ep", "val").embeddings[:])
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_other_weights_into_the_same_store_are_refused(store, tmp_path, caplog):
    from embed.checkpoint import save_random_checkpoint
    from embed.encoders import get_spec
    other = save_random_checkpoint(tmp_path / "vits16_800ep.pth.tar", get_spec("vits16_800ep"), seed=2)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    shards = Path(open_embeddings(store, "vits16_800ep", "val").attrs["shards"]).parent
    assert main([str(shards), "--split", "val", "--encoder", "vits16_800ep", "--weights", str(other),
                 "--out", str(copy)]) == 1
    assert "was built from other inputs or settings (weights_sha256" in caplog.text


def test_wrong_architecture_fails_loudly(embed_shards, vits_checkpoint, tmp_path, caplog):
    shutil.copy(vits_checkpoint, tmp_path / "vitb16_600ep.pth.tar")
    assert main([str(embed_shards), "--split", "val", "--encoder", "vitb16_600ep",
                 "--weights", str(tmp_path), "--out", str(tmp_path / "x.zarr")]) == 1
    assert "does not fit vitb16_600ep (deit_base" in caplog.text and "misshapen" in caplog.text
    assert not (tmp_path / "x.zarr").exists()


def test_incomplete_shards_are_refused(embed_shards, tmp_path, caplog):
    shutil.copytree(embed_shards, tmp_path / "s")
    (tmp_path / "s" / "val" / "manifest.json").unlink()
    assert main([str(tmp_path / "s"), "--split", "val", "--encoder", "vits16_800ep",
                 "--weights", "random", "--out", str(tmp_path / "x.zarr")]) == 1
    assert "unfinished: rerun python -m shard" in caplog.text


def _embed_cmd(shards, weights, out, batch="2"):
    return [sys.executable, "-m", "embed", str(shards), "--split", "val", "--encoder", "vits16_800ep",
            "--weights", str(weights), "--out", str(out), "--batch-size", batch, "--threads", "1"]


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_the_same_store(embed_shards, vits_checkpoint, store, tmp_path):
    out = tmp_path / "k.zarr"
    proc = subprocess.Popen(_embed_cmd(embed_shards, vits_checkpoint, out), cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = out / "vits16_800ep" / "val" / "shards_done" / "c"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (
            done_dir.exists() and len(list(done_dir.iterdir())) >= 2):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "finished before it could be killed"
    partial = open_embeddings(out, "vits16_800ep", "val", require_complete=False)
    assert not partial.attrs["complete"]
    assert subprocess.run(_embed_cmd(embed_shards, vits_checkpoint, out), cwd=ROOT).returncode == 0
    a = np.asarray(open_embeddings(out, "vits16_800ep", "val").embeddings[:])
    b = np.asarray(open_embeddings(store, "vits16_800ep", "val").embeddings[:])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(embed_shards, vits_checkpoint, store, tmp_path):
    out = tmp_path / "t.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "embed", *_embed_cmd(embed_shards, vits_checkpoint, out)[3:],
           "--device", "cpu"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    e = open_embeddings(out, "vits16_800ep", "val")
    assert e.attrs["complete"]
    np.testing.assert_allclose(np.asarray(e.embeddings[:]),
                               np.asarray(open_embeddings(store, "vits16_800ep", "val").embeddings[:]),
                               rtol=1e-4, atol=1e-4)


def _run(shards, out, encoders, **kw):
    from embed.run import Config, run
    return run(Config(shards=shards, split="val", encoders=tuple(encoders), weights="random", out=out,
                      batch_size=4, threads=2, **kw))


@pytest.mark.slow
def test_compile_on_cpu_gives_the_eager_rows(embed_shards, tiny_encoders, tmp_path):
    _run(embed_shards, tmp_path / "eager.zarr", ["tiny_a"], compile=False)
    _run(embed_shards, tmp_path / "compiled.zarr", ["tiny_a"], compile=True)
    eager = np.asarray(open_embeddings(tmp_path / "eager.zarr", "tiny_a", "val").embeddings[:])
    compiled = np.asarray(open_embeddings(tmp_path / "compiled.zarr", "tiny_a", "val").embeddings[:])
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)


def test_several_encoders_in_one_run(embed_shards, tiny_encoders, tmp_path):
    s = _run(embed_shards, tmp_path / "both.zarr", ["tiny_a", "tiny_b"], check_drift=5)
    assert s["complete"] and s["images"] == 17
    for name, dim in (("tiny_a", 32), ("tiny_b", 48)):
        _run(embed_shards, tmp_path / f"{name}.zarr", [name])
        both = open_embeddings(tmp_path / "both.zarr", name, "val")
        alone = open_embeddings(tmp_path / f"{name}.zarr", name, "val")
        assert both.shape == (17, dim)
        np.testing.assert_allclose(both.embeddings[:], alone.embeddings[:], rtol=1e-5, atol=1e-5)
        assert both.attrs["random_weights"] is True
        assert both.attrs["drift"]["images"] == 5 and both.attrs["drift"]["min_cos"] > 0.9999


def test_float16_rows_are_the_float32_rows_rounded(embed_shards, tiny_encoders, tmp_path):
    _run(embed_shards, tmp_path / "32.zarr", ["tiny_a"])
    _run(embed_shards, tmp_path / "16.zarr", ["tiny_a"], dtype="float16")
    a = open_embeddings(tmp_path / "32.zarr", "tiny_a", "val")
    b = open_embeddings(tmp_path / "16.zarr", "tiny_a", "val")
    assert b.embeddings.dtype == np.float16 and b.attrs["identity"]["dtype"] == "float16"
    np.testing.assert_array_equal(np.asarray(b.embeddings[:]), np.asarray(a.embeddings[:]).astype(np.float16))
    assert next(b.row_blocks())[1].dtype == np.float32  # readers get float32


def test_second_run_embeds_nothing(embed_shards, tiny_encoders, tmp_path):
    _run(embed_shards, tmp_path / "a.zarr", ["tiny_a"])
    again = _run(embed_shards, tmp_path / "a.zarr", ["tiny_a"])
    assert again["images"] == 0 and again["complete"]


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", installed_decoders())
def test_gpu_bf16_compiled_auto_batch_stays_close_to_fp32(embed_shards, vits_checkpoint, reference_rows,
                                                          tmp_path, decoder):
    out = tmp_path / "gpu.zarr"
    assert main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights",
                 str(vits_checkpoint), "--out", str(out), "--device", "cuda", "--check-drift", "17",
                 "--decoder", decoder]) == 0
    e = open_embeddings(out, "vits16_800ep", "val")
    assert e.attrs["precision"] == "bf16" and e.attrs["batch_size"] >= 16
    assert 0.99 <= e.attrs["drift"]["min_cos"] < 1
    cos = cosines(np.asarray(e.embeddings[:]), reference_rows)  # nvJPEG + bf16 + compile vs PIL + fp32
    print(f"{decoder}: bf16 vs the reference path: min cos {cos.min():.6f}, drift {e.attrs['drift']}")
    assert cos.min() >= 0.99


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", installed_decoders())
def test_gpu_fp32_eager_matches_the_reference(embed_shards, vits_checkpoint, reference_rows, tmp_path,
                                              decoder):
    out = tmp_path / "gpu32.zarr"
    assert main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights",
                 str(vits_checkpoint), "--out", str(out), "--device", "cuda", "--precision", "fp32",
                 "--no-compile", "--batch-size", "8", "--decoder", decoder]) == 0
    rows = np.asarray(open_embeddings(out, "vits16_800ep", "val").embeddings[:])
    cos = cosines(rows, reference_rows)
    print(f"{decoder}: fp32 on the GPU vs the reference path: min cos {cos.min():.6f}")
    # nvJPEG decodes a little differently from PIL's libjpeg (0.9956 measured on an H200, random
    # weights); torchvision-cpu decodes with libjpeg-turbo as PIL does
    assert cos.min() >= (0.99999 if decoder == "torchvision-cpu" else 0.99)


def _views(out):
    return np.asarray(open_embeddings(out, "tiny_a", "val").views[:])


def test_views_are_reproducible_across_batch_sizes(embed_shards, tiny_encoders, tmp_path):
    _run(embed_shards, tmp_path / "b4.zarr", ["tiny_a"], views=3, view_seed=5)
    from embed.run import Config, run
    run(Config(shards=embed_shards, split="val", encoders=("tiny_a",), weights="random",
               out=tmp_path / "b7.zarr", batch_size=7,
               threads=2, views=3, view_seed=5))
    a, b = _views(tmp_path / "b4.zarr"), _views(tmp_path / "b7.zarr")
    assert a.shape == (17, 3, 32) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    plain = np.asarray(open_embeddings(tmp_path / "b4.zarr", "tiny_a", "val").embeddings[:])
    assert np.abs(a[:, 0] - a[:, 1]).max() > 1e-2 and np.abs(a[:, 0] - plain).max() > 1e-2
    _run(embed_shards, tmp_path / "s6.zarr", ["tiny_a"], views=3, view_seed=6)
    assert np.abs(_views(tmp_path / "s6.zarr") - a).max() > 1e-2  # another seed, other views


def test_augment_none_views_are_the_center_crop(embed_shards, tiny_encoders, tmp_path):
    _run(embed_shards, tmp_path / "n.zarr", ["tiny_a"], views=2, augment="none")
    e = open_embeddings(tmp_path / "n.zarr", "tiny_a", "val")
    v, plain = np.asarray(e.views[:]), np.asarray(e.embeddings[:])
    np.testing.assert_allclose(v[:, 0], plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v[:, 1], plain, rtol=1e-5, atol=1e-5)


def test_views_settings_are_part_of_the_identity(embed_shards, tiny_encoders, tmp_path):
    from embed.store import StoreError
    _run(embed_shards, tmp_path / "v.zarr", ["tiny_a"], views=2, view_seed=1)
    with pytest.raises(StoreError, match="views"):
        _run(embed_shards, tmp_path / "v.zarr", ["tiny_a"], views=2, view_seed=2)


@pytest.mark.slow
def test_views_with_torchrun_two_processes_equal_one(embed_shards, tmp_path):
    base = ["--split", "val", "--encoder", "vits16_800ep", "--weights", "random", "--batch-size", "3",
            "--threads", "1", "--views", "2", "--view-seed", "9", "--device", "cpu"]
    one = [sys.executable, "-m", "embed", str(embed_shards), *base, "--out", str(tmp_path / "1.zarr")]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "embed", str(embed_shards), *base, "--out", str(tmp_path / "2.zarr")]
    for cmd in (one, two):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    a = np.asarray(open_embeddings(tmp_path / "1.zarr", "vits16_800ep", "val").views[:])
    b = np.asarray(open_embeddings(tmp_path / "2.zarr", "vits16_800ep", "val").views[:])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_each_run_is_recorded_and_the_first_kept(embed_shards, tiny_encoders, tmp_path):
    """A group resumed on another machine recorded only the last run's device, batch and versions."""
    out = tmp_path / "r.zarr"
    args = [str(embed_shards), "--split", "val", "--encoder", "tiny_a", "--weights", "random",
            "--out", str(out)]
    assert main(args + ["--batch-size", "4"]) == 0
    from embed.store import open_group

    open_group(out, "tiny_a", "val", mode="a")["shards_done"][1] = False  # a shard to do again
    assert main(args + ["--batch-size", "2"]) == 0
    a = open_embeddings(out, "tiny_a", "val").attrs
    assert a["batch_size"] == 4 and [r["batch_size"] for r in a["runs"]] == [4, 2]
    assert [r["shards_done_before"] for r in a["runs"]] == [0, 4] and a["skipped_files"] == 0


def test_auto_resumes_a_group_with_the_decoder_it_was_built_with(embed_shards, tiny_encoders, tmp_path,
                                                                 caplog):
    """A group built with --decoder torchvision, resumed with the default (auto: DALI here) would be
    refused as built from other settings; auto keeps the group's decoder, and each run says which ran."""
    out = tmp_path / "r.zarr"
    args = [str(embed_shards), "--split", "val", "--encoder", "tiny_a", "--weights", "random",
            "--threads", "2", "--out", str(out), "--batch-size", "4"]
    assert main(args + ["--decoder", "torchvision"]) == 0
    from embed.store import open_group

    open_group(out, "tiny_a", "val", mode="a")["shards_done"][1] = False
    assert main(args) == 0 and "decoder torchvision" in caplog.text.splitlines()[-2]
    runs = open_embeddings(out, "tiny_a", "val").attrs["runs"]
    assert [r["decoder"]["name"] for r in runs] == ["torchvision", "torchvision"]
    assert runs[0]["decoder"] == {"name": "torchvision", "threads": 1, "hw_share": None, "cpu_share": 0.0}
    assert "then" in caplog.text and "img/s until the rows were stored" in caplog.text
    assert main(args[:-2] + ["--out", str(tmp_path / "new.zarr")]) == 0  # a new group: auto's own pick
    assert open_embeddings(tmp_path / "new.zarr", "tiny_a", "val").attrs["identity"]["decoder"] == "dali"


def test_the_run_reports_its_steady_part_apart_from_the_first_batch(embed_shards, tiny_encoders, tmp_path):
    from embed.run import Config, run

    stats = run(Config(shards=embed_shards, split="val", encoders=("tiny_a",), weights="random",
                       out=tmp_path / "c.zarr", batch_size=4, decoder="torchvision", threads=2))
    assert stats["images"] == 17 and stats["first_batch_images"] == 4 and stats["steady_images"] == 13
    assert 0 < stats["first_batch_s"] and 0 < stats["steady_s"]
    assert stats["wall_s"] == pytest.approx(stats["first_batch_s"] + stats["steady_s"], rel=1e-6)
    assert 0 < stats["compute_s"] and stats["compute_s"] + stats["wait_s"] <= stats["steady_s"] * (1 + 1e-6)


def test_deal_gives_every_shard_some_target_lacks_evenly_to_the_ranks():
    """A shard one encoder finished and the other did not is dealt again (all, not any)."""
    from embed.dist import Dist, deal

    done = [np.array([True, True, False, True, False, False]),
            np.array([True, False, False, True, True, False])]
    assert deal(done, Dist(0, 1)) == [1, 2, 4, 5]
    assert deal(done, Dist(0, 2)) == [1, 4] and deal(done, Dist(1, 2)) == [2, 5]
    assert deal([np.ones(3, bool)], Dist(0, 2)) == []


def test_views_beyond_the_bound_are_refused(embed_shards, tmp_path, capsys):
    """--views 100000 (a typo for 10) grew to 14 GB at 0 of 16 images."""
    with pytest.raises(SystemExit):
        main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights", "random",
              "--out", str(tmp_path / "v.zarr"), "--views", "100000"])
    assert "--views 100000: at most 64" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--threads", "-2"), ("--check-drift", "-1"),
                                         ("--batch-size", "0"), ("--hw-share", "1.5"), ("--hw-share", "nan"),
                                         ("--cpu-share", "-0.1"), ("--cpu-share", "half")])
def test_numeric_flags_have_a_range(embed_shards, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        main([str(embed_shards), "--split", "val", "--encoder", "vits16_800ep", "--weights", "random",
              "--out", str(tmp_path / "v.zarr"), flag, value])
    assert flag in capsys.readouterr().err and not (tmp_path / "v.zarr").exists()
