"""python -m shard end to end: the manifest, order, round trips, determinism, resume, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import make_dataset

from shard.__main__ import main
from shard.images import check_image, jpeg_payload
from shard.reader import open_split
from tests.conftest import jpeg_bytes, make_folder, make_zoo, write

ROOT = Path(__file__).parents[1]


def outputs(split_dir: Path) -> dict[str, bytes]:
    """Every file a finished split holds, name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(split_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    fates = make_zoo(root / "train")
    make_folder(root / "val", ["cat", "dog"], per_class=5)
    write(root / "val" / "dog" / "sub" / "z.v2.jpeg", jpeg_bytes(seed=99))
    return root, fates


@pytest.fixture(scope="module")
def sharded(src, tmp_path_factory):
    root, fates = src
    out = tmp_path_factory.mktemp("out")
    assert main([str(root), str(out), "--samples-per-shard", "4", "--workers", "1"]) == 0
    return root, fates, out


def test_manifest_lists_every_skip_and_repair(sharded):
    root, fates, out = sharded
    m = json.loads((out / "train" / "manifest.json").read_text())
    assert m["format"] == "msnpipe-shards/1" and m["classes"] == ["cat", "dog"]
    assert {s["path"] for s in m["skipped"]} == {p for p, f in fates.items() if f == "skip"}
    assert {r["path"] for r in m["repaired"]} == {p for p, f in fates.items() if f == "repair"}
    assert all(s["reason"] for s in m["skipped"]) and all(r["action"] for r in m["repaired"])
    kept = sum(f != "skip" for f in fates.values())
    assert m["num_samples"] == kept and sum(s["num_samples"] for s in m["shards"]) == kept
    assert [s["num_samples"] for s in m["shards"]] == [4] * (kept // 4) + ([kept % 4] if kept % 4 else [])
    assert not (out / "train" / ".work").exists()


def test_samples_follow_imagefolder_order(sharded):
    root, fates, out = sharded
    val = open_split(out, "val")
    tv = ImageFolder(root / "val")
    assert [str(root / "val" / p) for p in val.paths()] == [p for p, _ in tv.samples]
    assert val.labels().tolist() == tv.targets
    train = open_split(out, "train")
    kept = {str(root / "train" / p) for p, f in fates.items() if f != "skip"}
    tv_train = make_dataset(str(root / "train"), {"cat": 0, "dog": 1}, is_valid_file=kept.__contains__)
    assert [str(root / "train" / p) for p in train.paths()] == [p for p, _ in tv_train]
    assert train.labels().tolist() == [t for _, t in tv_train]


def expected_payloads(root: Path, split) -> list[bytes]:
    return [jpeg_payload(str(p), check_image(str(p)), 95, None)
            for p in (root / split.name / rel for rel in split.paths())]


def test_round_trip_through_webdataset(sharded):
    root, _, out = sharded
    split = open_split(out, "train")
    got = list(wds.WebDataset([str(p) for p in split.tar_paths()], shardshuffle=False))
    assert [s["__key__"] for s in got] == [f"{i:08d}" for i in range(split.num_samples)]
    assert [int(s["cls"]) for s in got] == split.labels().tolist()
    assert [s["jpg"] for s in got] == expected_payloads(root, split)


def test_round_trip_through_dali_cpu_reader(sharded):
    from nvidia.dali import fn, pipeline_def

    root, _, out = sharded
    split = open_split(out, "train")

    @pipeline_def(batch_size=split.num_samples, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(p) for p in split.tar_paths()], index_paths=[str(p) for p in split.idx_paths()],
            ext=["jpg", "cls"], missing_component_behavior="error")
        return jpg, cls, fn.decoders.image(jpg, device="cpu")

    p = pipe()
    p.build()
    jpg, cls, img = p.run()
    assert [bytes(np.asarray(t)) for t in jpg] == expected_payloads(root, split)
    assert [int(bytes(np.asarray(t))) for t in cls] == split.labels().tolist()
    assert all(np.asarray(t).shape[2] == 3 for t in img)


def test_output_is_the_same_for_any_worker_count(src, sharded, tmp_path):
    root, _, out1 = sharded
    assert main([str(root), str(tmp_path), "--samples-per-shard", "4", "--workers", "2"]) == 0
    for split in ("train", "val"):
        assert outputs(tmp_path / split) == outputs(out1 / split)


def test_second_run_does_nothing(sharded, caplog):
    root, _, out = sharded
    before = {p: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    assert main([str(root), str(out), "--samples-per-shard", "4", "--workers", "1"]) == 0
    assert "already complete" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in (out / "train").iterdir()} == before


def test_other_settings_over_a_finished_split_are_refused(sharded, caplog):
    root, _, out = sharded
    assert main([str(root), str(out), "--samples-per-shard", "5"]) == 1
    assert "made with settings" in caplog.text and "samples_per_shard': 4" in caplog.text


def test_strict_fails_before_writing_any_shard(src, tmp_path, caplog):
    root, _ = src
    assert main([str(root), str(tmp_path), "--splits", "train", "--strict", "--workers", "1"]) == 1
    assert "--strict: 4 file(s) cannot be sharded" in caplog.text
    assert "train/dog/truncated.JPEG (truncated or corrupt" in caplog.text
    assert not list(tmp_path.rglob("*.tar")) and not list(tmp_path.rglob("manifest.json"))


def test_split_flag_and_class_mismatch(tmp_path, caplog):
    make_folder(tmp_path / "src" / "train", ["a", "b"], 2)
    make_folder(tmp_path / "src" / "val", ["a", "c"], 2)
    assert main([str(tmp_path / "src"), str(tmp_path / "out")]) == 1
    assert "different classes: only in train: b; only in val: c" in caplog.text
    assert main([str(tmp_path / "src" / "val"), str(tmp_path / "out"), "--split", "mine"]) == 0
    assert open_split(tmp_path / "out", "mine").classes == ["a", "c"]


def _run_and_kill(src: Path, out: Path, ready) -> None:
    """Start python -m shard, SIGKILL its whole process group once `ready()` holds."""
    cmd = [sys.executable, "-m", "shard", str(src), str(out), "--samples-per-shard", "10",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "finished before it could be killed"


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_bytes(tmp_path):
    src = make_folder(tmp_path / "src" / "train", [f"c{i}" for i in range(4)], 150, 256, 192)
    src = src.parent
    main([str(src), str(tmp_path / "ref"), "--samples-per-shard", "10", "--workers", "2"])
    ref = outputs(tmp_path / "ref" / "train")
    work = tmp_path / "out" / "train" / ".work"

    def validating() -> bool:
        journal = work / "validated.tsv"
        return journal.exists() and journal.stat().st_size > 0

    def writing() -> bool:
        return len(list(work.glob("*.tar.json"))) >= 3

    _run_and_kill(src, tmp_path / "out", validating)
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    _run_and_kill(src, tmp_path / "out", writing)
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    assert main([str(src), str(tmp_path / "out"), "--samples-per-shard", "10", "--workers", "2"]) == 0
    assert outputs(tmp_path / "out" / "train") == ref
