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
    return [jpeg_payload(str(p), check_image(str(p)), 95, max_side=None)
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
           "--workers", "2", "--validate", "full"]  # full: slow enough to be caught mid-way
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "finished before it could be killed"


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_bytes(tmp_path):
    src = make_folder(tmp_path / "src" / "train", [f"c{i}" for i in range(4)], 250, 256, 192)
    src = src.parent
    args = ["--samples-per-shard", "10", "--workers", "2", "--validate", "full"]
    main([str(src), str(tmp_path / "ref"), *args])
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
    assert main([str(src), str(tmp_path / "out"), *args]) == 0
    assert outputs(tmp_path / "out" / "train") == ref


def test_out_inside_src_or_src_inside_out_is_refused(tmp_path, caplog):
    src = make_folder(tmp_path / "src" / "train", ["a", "b"], 2).parent
    assert main([str(src), str(src / "train" / "a" / "out"), "--workers", "1"]) == 1
    assert "inside the source" in caplog.text
    assert main([str(src), str(src / "shards"), "--workers", "1"]) == 1
    assert main([str(src / "train"), str(tmp_path), "--split", "x", "--workers", "1"]) == 1
    assert "contains the source" in caplog.text
    assert not (src / "train" / "a" / "out").exists() and not (src / "shards").exists()
    assert sorted(p.name for p in (src / "train").iterdir()) == ["a", "b"]


def test_out_that_is_a_file_or_cannot_be_made_gets_one_line(tmp_path, caplog):
    src = make_folder(tmp_path / "src" / "train", ["a"], 1).parent
    (tmp_path / "file").write_text("x")
    assert main([str(src), str(tmp_path / "file"), "--workers", "1"]) == 1
    assert "is a file, expected a folder" in caplog.text
    assert main([str(src), str(tmp_path / "file" / "sub"), "--workers", "1"]) == 1
    assert "cannot be created" in caplog.text


def test_a_fifo_with_an_image_name_is_skipped_not_waited_on(tmp_path):
    src = make_folder(tmp_path / "src" / "train", ["a"], 2).parent
    os.mkfifo(src / "train" / "a" / "pipe.JPEG")
    cmd = [sys.executable, "-m", "shard", str(src), str(tmp_path / "out"), "--workers", "1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    assert m["skipped"] == [{"path": "a/pipe.JPEG", "reason": "not a regular file: a FIFO"}]
    assert m["num_samples"] == 2


def test_a_split_with_other_classes_than_one_already_in_out_is_refused(tmp_path, caplog):
    src = tmp_path / "src"
    make_folder(src / "train", ["a", "b", "c"], 2)
    make_folder(src / "val", ["a", "c"], 2)  # b has no validation images
    out = tmp_path / "out"
    assert main([str(src), str(out), "--splits", "train", "--workers", "1"]) == 0
    assert main([str(src), str(out), "--splits", "val", "--workers", "1"]) == 1
    assert "val has classes other than train already in" in caplog.text and "only in train: b" in caplog.text
    assert not (out / "val").exists()
    assert main([str(src), str(out), "--splits", "val", "--classes-from", "train", "--workers", "1"]) == 0
    val = open_split(out, "val")
    assert val.classes == ["a", "b", "c"] and val.labels().tolist() == [0, 0, 2, 2]
    make_folder(src / "val", ["d"], 1)
    assert main([str(src), str(tmp_path / "o2"), "--splits", "train", "--workers", "1"]) == 0
    assert main([str(src), str(tmp_path / "o2"), "--splits", "val", "--classes-from", "train",
                 "--workers", "1"]) == 1
    assert "val has classes that train lacks: d" in caplog.text


def test_a_broken_manifest_gets_one_line(sharded, tmp_path, caplog):
    import shutil as sh

    from shard.reader import ShardFormatError
    root, _, out = sharded
    sh.copytree(out, tmp_path / "o")
    (tmp_path / "o" / "val" / "manifest.json").write_text('{"format": "msnpipe-shards/1", "spl')
    with pytest.raises(ShardFormatError, match="manifest.json: not valid JSON"):
        open_split(tmp_path / "o", "val")
    assert main([str(root), str(tmp_path / "o"), "--samples-per-shard", "4", "--workers", "1"]) == 1
    assert "manifest.json: not valid JSON" in caplog.text


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.slow
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    src = make_folder(tmp_path / "src" / "train", [f"c{i}" for i in range(4)], 150, 256, 192).parent
    cmd = [sys.executable, "-m", "shard", str(src), str(tmp_path / "out"), "--workers", "2",
           "--validate", "full"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "out" / "train" / ".work" / "validated.tsv"
    deadline = time.monotonic() + 60
    while not (journal.exists() and journal.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _children(proc.pid)
    assert workers, "no worker processes seen"
    proc.kill()  # the parent only, as kill -9 <pid> does
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)


def test_a_file_replaced_in_place_is_validated_again(tmp_path):
    import os

    from shard.scan import find_classes, list_candidates
    from shard.validate import verdicts
    split = make_folder(tmp_path / "train", ["a", "b"], 3)
    cands = list_candidates(split, find_classes(split))
    work = tmp_path / "work"
    work.mkdir()
    first = list(verdicts(split, cands, work, max_side=None, pool=None))
    assert {v.status for v in first} == {"keep"}
    target = split / cands[4].path
    size, mtime = target.stat().st_size, target.stat().st_mtime_ns
    target.write_bytes(b"\0" * size)  # same size, other bytes: no longer an image
    os.utime(target, ns=(mtime + 10**9, mtime + 10**9))
    again = list(verdicts(split, cands, work, max_side=None, pool=None))
    assert again[4].status == "skip" and [v.status for i, v in enumerate(again) if i != 4] == ["keep"] * 5


def test_a_file_that_could_not_be_read_is_read_again_on_rerun(tmp_path, monkeypatch, caplog):
    """An EIO while reading a file (after its stat worked) is no verdict on the file: it is not
    journaled, the split is left unfinished with one line naming the file, and the rerun reads
    it again and ends with the bytes of a run that never met the error."""
    import errno

    import shard.images

    make_folder(tmp_path / "src" / "train", ["a", "b"], per_class=5)
    flaky = str(tmp_path / "src" / "train" / "a" / "img_002.JPEG")
    real, failed = shard.images.read_regular, []

    def read_once_failing(path):
        if path == flaky and not failed:
            failed.append(path)
            raise OSError(errno.EIO, "Input/output error", path)
        return real(path)

    monkeypatch.setattr(shard.images, "read_regular", read_once_failing)
    args = ["--samples-per-shard", "3", "--workers", "1"]
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), *args]) == 1
    assert "a/img_002.JPEG" in caplog.text and "rerun" in caplog.text and failed
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    journal = (tmp_path / "out" / "train" / ".work" / "validated.tsv").read_text().splitlines()
    assert len(journal) == 9 and not any(line.startswith("a/img_002.JPEG") for line in journal)
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), *args]) == 0
    assert main([str(tmp_path / "src"), str(tmp_path / "clean"), *args]) == 0
    assert outputs(tmp_path / "out" / "train") == outputs(tmp_path / "clean" / "train")
    assert open_split(tmp_path / "out", "train").num_samples == 10


@pytest.mark.parametrize("flags", [["--split", "../../escaped"], ["--splits", "train,../escaped"],
                                   ["--split", "a/b"], ["--classes-from", "../x"]])
def test_a_split_name_that_is_not_a_plain_name_is_refused_and_nothing_is_written(tmp_path, flags, caplog):
    """`--split ../../x` once wrote the split folder and its tars outside OUT, with exit 0."""
    make_folder(tmp_path / "deep" / "src" / "train", ["a", "b"], per_class=2)
    src = tmp_path / "deep" / "src" / ("train" if flags[0] == "--split" else "")
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main([str(src), str(tmp_path / "deep" / "out"), *flags, "--workers", "1"]) == 1
    assert "not a plain name" in caplog.text
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_split_folder_that_is_a_symlink_is_refused(tmp_path, caplog):
    """Through a symlinked name, manifest.json landed in the source folder."""
    make_folder(tmp_path / "src" / "train", ["a", "b"], per_class=2)
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "train")
    (tmp_path / "elsewhere").mkdir()
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "1"]) == 1
    assert "is a symbolic link" in caplog.text and not any((tmp_path / "elsewhere").iterdir())


@pytest.fixture
def finished(tmp_path):
    make_folder(tmp_path / "src" / "train", ["a", "b", "c"], per_class=4)
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--samples-per-shard", "5",
                 "--workers", "1"]) == 0
    return tmp_path / "src", tmp_path / "out"


def test_a_label_edited_in_samples_tsv_is_refused_by_every_reader(finished, caplog):
    """It was stored as given, with exit 0."""
    from embed.__main__ import main as embed_main
    from shard.reader import ShardFormatError

    _, out = finished
    tsv = out / "train" / "samples.tsv"
    tsv.write_text(tsv.read_text().replace("2\t0\ta/img_002.JPEG", "2\t1\ta/img_002.JPEG"))
    with pytest.raises(ShardFormatError, match="samples.tsv: changed after the split was made"):
        open_split(out, "train").labels()
    assert embed_main([str(out), "--split", "train", "--encoder", "vits16_800ep", "--weights", "random",
                       "--out", str(out.parent / "s.zarr")]) == 1
    assert "changed after the split was made" in caplog.text and not (out.parent / "s.zarr").exists()


def test_class_names_swapped_in_the_manifest_are_refused(finished, caplog):
    """They passed shard.verify; the labels would then name other classes."""
    from shard.verify import main as verify_main

    _, out = finished
    path = out / "train" / "manifest.json"
    m = json.loads(path.read_text())
    m["classes"] = ["b", "a", "c"]
    path.write_text(json.dumps(m))
    assert verify_main([str(out)]) == 1
    assert "classes are not sorted" in caplog.text
    m["classes"] = ["a", "b", "c"][::1]
    m["classes"][0], m["classes"][1] = "a", "a2"  # sorted, yet not the folders the samples came from
    path.write_text(json.dumps(m))
    caplog.clear()
    assert verify_main([str(out)]) == 1
    assert "sample 4 (b/img_000.JPEG) has label 1, class 'a2', not its folder 'b'" in caplog.text


def test_a_rerun_over_a_damaged_split_refuses_it(finished, caplog):
    """It said 'already complete'."""
    src, out = finished
    tar = out / "train" / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    assert main([str(src), str(out), "--samples-per-shard", "5", "--workers", "1"]) == 1
    assert "is damaged" in caplog.text and "bytes, the manifest says" in caplog.text


def test_a_split_with_no_image_that_can_be_kept_is_refused(tmp_path, caplog):
    """It was accepted as complete; probe and knn then crashed."""
    for cls in ("a", "b"):
        write(tmp_path / "src" / "train" / cls / "x.JPEG", b"not an image at all\n")
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "1"]) == 1
    assert "none of its 2 files can be kept" in caplog.text and "not an image" in caplog.text
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()


def test_the_manifest_is_checked_again_under_the_lock(finished, monkeypatch):
    """Two runs that both saw no manifest: the one that takes the lock second finds the first's
    manifest and does nothing (it once redid the split, and removed .work after the lock)."""
    import shard.build

    src, out = finished
    before = outputs(out / "train")
    written = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")}
    manifest = out / "train" / "manifest.json"
    saved = manifest.read_bytes()
    real = shard.build.exclusive

    @__import__("contextlib").contextmanager
    def lock_then_the_other_run_finishes(path, what):
        with real(path, what):
            manifest.write_bytes(saved)  # the first run finished while this one waited for its lock
            yield

    manifest.unlink()
    monkeypatch.setattr(shard.build, "exclusive", lock_then_the_other_run_finishes)
    assert main([str(src), str(out), "--samples-per-shard", "5", "--workers", "1"]) == 0
    assert outputs(out / "train") == before and not (out / "train" / ".work").exists()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")} == written  # not redone
