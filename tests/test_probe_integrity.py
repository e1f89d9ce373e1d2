"""Every probe command under bad input: non-finite stores, class lists that differ, two writers,
reruns with other settings, duplicated rows, ambiguous names, impossible k. Each case once gave
a number (or a traceback, or a half-written file) with exit 0."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embed import store
from msnpipe.runtime import UserError
from probe.__main__ import main as probe_main
from probe.active import main as active_main
from probe.diagnose import main as diagnose_main
from probe.knn import main as knn_main
from probe.msn import main as msn_main
from probe.plot import main as plot_main
from probe.table import main as table_main
from tests.conftest import as_older_version, make_store, random_store

ROOT = Path(__file__).parents[1]
FAST = ["--per-class", "1-2", "--seeds", "0-1", "--backend", "sklearn"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("clean"), classes=6, dim=8, train_per_class=8, test_per_class=4)


@pytest.fixture
def damaged(clean, tmp_path):
    """A copy of the clean store with 3 train rows set to NaN and 1 val row to Inf."""
    import shutil
    shutil.copytree(clean, tmp_path / "bad.zarr")
    g = as_older_version(tmp_path / "bad.zarr", "toy", "train")
    g["embeddings"][[3, 17, 40]] = np.nan
    as_older_version(tmp_path / "bad.zarr", "toy", "val")["embeddings"][5, 2] = np.inf
    return tmp_path / "bad.zarr"


def _names(path, n):
    g = store.open_group(path, "toy", "train", mode="a")
    g.create_array("paths", shape=(n,), chunks=(1000,), dtype=str)
    g["paths"][:] = np.array([f"c{i % 6}/img_{i}.JPEG" for i in range(n)])


def test_every_command_refuses_a_non_finite_store(damaged, tmp_path, caplog):
    _names(damaged, 48)
    (tmp_path / "subset.txt").write_text("img_0.JPEG\nimg_1.JPEG\n")
    out = tmp_path / "out"
    runs = {
        "probe": lambda: probe_main([str(damaged), "--encoder", "toy", "--out", str(out), *FAST]),
        "knn": lambda: knn_main([str(damaged), "--encoder", "toy", "--k", "3", "--out", str(out)]),
        "msn": lambda: msn_main([str(damaged), "--encoder", "toy", "--subset", str(tmp_path / "subset.txt"),
                                 "--backend", "sklearn", "--out", str(out)]),
        "diagnose": lambda: diagnose_main([str(damaged), "--encoder", "toy", "--out", str(out)]),
        "active": lambda: active_main([str(damaged), "--encoder", "toy", "--out", str(out), "--rounds", "1",
                                       "--seeds", "0", "--strategies", "random", "--backend", "sklearn"]),
    }
    for name, call in runs.items():
        caplog.clear()
        assert call() == 1, name
        assert "toy/train: 3 of 48 rows are not finite" in caplog.text or \
            "toy/val: 1 of 24 rows are not finite" in caplog.text, name
        assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")], name


def test_train_and_test_with_other_class_lists_are_refused(clean, tmp_path, caplog):
    import shutil
    shutil.copytree(clean, tmp_path / "c.zarr")
    s = tmp_path / "c.zarr"
    store.open_group(s, "toy", "train", mode="a").attrs.update({"classes": list("abcdef")})
    store.open_group(s, "toy", "val", mode="a").attrs.update({"classes": list("abcdeg")})
    for call in (lambda: probe_main([str(s), "--encoder", "toy", "--out", str(tmp_path / "o"), *FAST]),
                 lambda: knn_main([str(s), "--encoder", "toy", "--k", "3"]),
                 lambda: diagnose_main([str(s), "--encoder", "toy", "--out", str(tmp_path / "d")])):
        caplog.clear()
        assert call() == 1
        assert "toy/train and toy/val have different classes: only in train: f; only in val: g" in caplog.text


def test_a_second_probe_on_the_same_out_is_refused(clean, tmp_path, caplog):
    from msnpipe.files import exclusive
    out = tmp_path / "o"
    out.mkdir()
    with exclusive(out / ".lock", "x"):
        assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]) == 1
    assert "is being written by pid" in caplog.text
    assert not (out / "fewshot.csv").exists()


def test_readers_refuse_duplicated_rows(clean, tmp_path, capsys):
    out = tmp_path / "o"
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]) == 0
    lines = (out / "fewshot.csv").read_text().splitlines(keepends=True)
    (out / "fewshot.csv").write_text("".join(lines + lines[1:3]))  # as two writers once left it
    assert plot_main([str(out), "--out", str(tmp_path / "p.png")]) == 1
    assert "fewshot.csv: 2 rows repeat (encoder, seed, n_per_class, C)" in capsys.readouterr().err
    assert table_main([str(out)]) == 1
    assert "rows repeat" in capsys.readouterr().err
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]) == 1


@pytest.mark.parametrize("change, named", [(["--max-iter", "50"], "max_iter: 1000 != 50"),
                                           (["--C", "0.5"], "Cs: [1.0] != [0.5]"),
                                           (["--test-split", "train"], "test_split: 'val' != 'train'")])
def test_a_rerun_with_other_settings_is_refused(clean, tmp_path, caplog, change, named):
    out = tmp_path / "o"
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]) == 0
    before = (out / "fewshot.csv").read_text(), (out / "fewshot.json").read_text()
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST, *change]) == 1
    assert "was written with other settings" in caplog.text and named in caplog.text
    assert ((out / "fewshot.csv").read_text(), (out / "fewshot.json").read_text()) == before
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), "--per-class", "1-3", "--seeds",
                       "0-2", "--backend", "sklearn"]) == 0  # more seeds and counts: a resume


def test_a_rerun_on_another_store_is_refused(clean, tmp_path, caplog):
    out = tmp_path / "o"
    other = make_store(tmp_path / "other", classes=6, dim=8, train_per_class=8, test_per_class=4, seed=5)
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]) == 0
    assert probe_main([str(other), "--encoder", "toy", "--out", str(out), *FAST]) == 1
    assert "was written with other settings (" in caplog.text and "train_identity: {" in caplog.text


def test_msn_names_that_match_two_files_are_an_error(clean, tmp_path, caplog):
    import shutil
    shutil.copytree(clean, tmp_path / "m.zarr")
    s = tmp_path / "m.zarr"
    g = as_older_version(s, "toy", "train")
    g.create_array("paths", shape=(48,), chunks=(1000,), dtype=str)
    g["paths"][:] = np.array([f"c{i % 6}/img_{i % 40}.JPEG" for i in range(48)])  # img_0..7 twice
    (tmp_path / "sub.txt").write_text("img_1.JPEG\nimg_20.JPEG\nimg_3.JPEG\n")
    assert msn_main([str(s), "--encoder", "toy", "--subset", str(tmp_path / "sub.txt"),
                     "--backend", "sklearn"]) == 1
    assert "sub.txt: 2 names match several files of toy/train: img_1.JPEG (c1/img_1.JPEG, c5/img_1.JPEG)" \
        in caplog.text
    (tmp_path / "empty.txt").write_text("\n\n")
    assert msn_main([str(s), "--encoder", "toy", "--subset", str(tmp_path / "empty.txt"),
                     "--backend", "sklearn"]) == 1
    assert "empty.txt: no image names in it" in caplog.text


def test_knn_k_above_the_train_rows_is_an_error(clean, caplog):
    assert knn_main([str(clean), "--encoder", "toy", "--k", "10,1000"]) == 1
    assert "--k 1000: toy/train has only 48 rows" in caplog.text


def test_diagnose_leaves_out_incomplete_groups_and_other_shards(clean, tmp_path):
    import shutil
    s = tmp_path / "d.zarr"
    shutil.copytree(clean, s)
    for enc, sha in (("same", "abc"), ("half", "abc"), ("other", "xyz")):
        g = store.create_group(s, enc, "val", layout=store.Layout(24, 5, 1000, 1), attrs={"identity": {}})
        if enc != "half":
            rows = np.random.default_rng(0).normal(size=(24, 5)).astype(np.float32)
            store.write_shard(g, 0, 0, rows=rows, labels=np.zeros(24), paths=[""] * 24)
            store.mark_complete_if_done(g)
        g.attrs.update({"shards_manifest_sha256": sha})
    store.open_group(s, "toy", "val", mode="a").attrs.update({"shards_manifest_sha256": "abc"})
    assert diagnose_main([str(s), "--encoder", "toy", "--out", str(tmp_path / "o"),
                          "--tsne-classes", "2", "--tsne-per-class", "3"]) == 0
    r = json.loads((tmp_path / "o" / "diagnostics.json").read_text())
    assert r["cka"]["encoders"] == ["same", "toy"]
    assert r["cka_left_out"] == {"half": "incomplete", "other": "built from other shards"}


@pytest.mark.parametrize("args, says", [
    (["--seeds", "5-1"], "--seeds: '5-1' is an empty range"),
    (["--seeds", "0-1000000000"], "--seeds: '0-1000000000' asks for 1000000001 values; at most 100000"),
    (["--per-class", "x"], "--per-class: 'x': expected numbers like 1-10 or 1,2,5"),
])
def test_bad_ranges_get_one_line(clean, tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as e:
        probe_main([str(clean), "--encoder", "toy", "--out", str(tmp_path), *args])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_out_a_file_gets_one_line(clean, tmp_path, caplog):
    (tmp_path / "f").write_text("x")
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(tmp_path / "f"), *FAST]) == 1
    assert "is a file, expected a folder" in caplog.text


def test_a_split_with_one_class_gets_one_line(tmp_path, caplog):
    from embed.from_npy import main as from_npy_main
    for split in ("train", "val"):
        np.save(tmp_path / f"embeddings_one_{split}.npy", np.ones((5, 3), np.float32))
        np.save(tmp_path / f"labels_{split}.npy", np.zeros(5, int))
    assert from_npy_main([str(tmp_path), "--encoder", "one", "--out", str(tmp_path / "s.zarr")]) == 0
    out = str(tmp_path / "o")
    assert probe_main([str(tmp_path / "s.zarr"), "--encoder", "one", "--out", out, *FAST]) == 1
    assert "one/train has a single class (0): a classifier needs two or more" in caplog.text


def _children(pid: int) -> list[int]:
    return [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]


@pytest.mark.slow
def test_fit_workers_exit_when_probe_is_killed(tmp_path):
    # noise labels: each fit iterates (separable data converges in a few steps, and on a fast machine
    # a short curve ends before the pool would pay); 1000 seeds keep the workers busy until the kill
    s = random_store(tmp_path, n_train=1200, n_val=600, dim=96, classes=60)
    cmd = [sys.executable, "-m", "probe", str(s), "--encoder", "r", "--out", str(tmp_path / "o"),
           "--seeds", "0-999", "--backend", "sklearn", "--jobs", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_path, deadline = tmp_path / "o" / "fewshot.csv", time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:  # the pool starts once fits have taken 3 s
        time.sleep(0.2)
        workers = [w for c in _children(proc.pid) for w in [c, *_children(c)]]
    assert workers, "no worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}")]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive
    with open(csv_path, newline="") as f:
        assert len(list(csv.DictReader(f))) >= 2


@pytest.mark.parametrize("command, flags, said", [
    ("probe", ["--seeds", "0,0"], "0 appears twice"),
    ("probe", ["--C", "1,1"], "1.0 appears twice"),
    ("probe", ["--per-class", "1,2,2"], "2 appears twice"),
    ("probe", ["--C", "inf"], "C must be a finite number > 0"),
    ("probe", ["--tol", "nan"], "--tol"),
    ("knn", ["--k", "5,5"], "5 appears twice"),
    ("knn", ["--temperature", "nan"], "--temperature"),
    ("knn", ["--temperature", "0"], "--temperature"),
    ("knn", ["--temperature", "-1"], "--temperature"),
    ("msn", ["--lambd", "-1"], "--lambd"),
    ("msn", ["--lambd", "nan"], "--lambd"),
    ("msn", ["--lambd", "0"], "--lambd"),
    ("active", ["--samples", "-1"], "--samples"),
    ("active", ["--targets", "-1"], "--targets"),
    ("active", ["--seeds", "1,1"], "1 appears twice"),
    ("diagnose", ["--max-rows", "0"], "--max-rows"),
    ("diagnose", ["--tsne-classes", "0"], "--tsne-classes"),
])
def test_a_value_out_of_range_or_repeated_is_refused_before_anything_is_read(clean, tmp_path, capsys,
                                                                              command, flags, said):
    """Repeated seeds, C or k wrote repeated keys with exit 0 (the next read refused them, blaming
    concurrency); nan, 0 or -1 temperatures and lambdas answered with exit 0; negative counts were
    tracebacks."""
    mains = {"probe": probe_main, "knn": knn_main, "msn": msn_main, "active": active_main,
             "diagnose": diagnose_main}
    extra = ["--subset", str(tmp_path / "s.txt")] if command == "msn" else []
    with pytest.raises(SystemExit) as e:
        mains[command]([str(clean), "--encoder", "toy", "--out", str(tmp_path / "o"), *extra, *flags])
    assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_plot_to_a_format_matplotlib_cannot_write_is_one_line(clean, tmp_path, capsys):
    out = tmp_path / "o"
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]) == 0
    assert plot_main([str(out), "--out", str(tmp_path / "x.unknownext")]) == 1
    err = capsys.readouterr().err
    assert "x.unknownext: matplotlib cannot write '.unknownext'" in err and "png" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name, garbage, readers", [
    ("fewshot.json", b"{garbage", ("probe",)),
    ("fewshot.csv", b"encoder,seed,n_per_class,C,test_acc\n\x00\x01,\n", ("probe", "table", "plot")),
    ("fewshot.csv", b"encoder,seed,n_per_class,C,test_acc\ntoy,0,1\n", ("probe", "table", "plot")),
    ("fewshot.csv", b"encoder,seed,n_per_class,C,test_acc\ntoy,0,1,1,high\n", ("table", "plot")),
])
def test_garbage_in_a_result_file_is_one_line_naming_it(clean, tmp_path, caplog, capsys, name, garbage,
                                                        readers):
    """Garbage in fewshot.json or fewshot.csv was a traceback in every reader."""
    out = tmp_path / "o"
    assert probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]) == 0
    (out / name).write_bytes(garbage)
    calls = {"probe": lambda: probe_main([str(clean), "--encoder", "toy", "--out", str(out), *FAST]),
             "table": lambda: table_main([str(out)]),
             "plot": lambda: plot_main([str(out), "--out", str(tmp_path / "p.png")])}
    for reader in readers:
        caplog.clear()
        assert calls[reader]() == 1, reader
        said = caplog.text + capsys.readouterr().err
        assert f"{out / name}" in said and "Traceback" not in said, (reader, said)


def test_garbage_in_active_results_is_one_line_naming_the_file(clean, tmp_path, caplog):
    out = tmp_path / "a"
    args = [str(clean), "--encoder", "toy", "--out", str(out), "--seeds", "0", "--strategies", "random",
            "--backend", "sklearn"]
    assert active_main(args + ["--rounds", "1"]) == 0
    npz = out / "active" / "random" / "seed0.npz"
    npz.write_bytes(b"PK\x03\x04 not a zip at all")
    assert active_main(args + ["--rounds", "1"]) == 1
    assert f"{npz}: not a selections file" in caplog.text
    (out / "active.json").write_text("[1, 2")
    caplog.clear()
    assert active_main(args + ["--rounds", "1"]) == 1 and "active.json: not valid JSON" in caplog.text


def test_a_result_file_never_takes_a_key_twice(tmp_path):
    from probe.results import ResultFile

    with ResultFile.open(tmp_path, "knn", {"a": 1}) as results:
        results.append({"encoder": "e", "k": 5, "temperature": 0.07, "top1": 0.5, "top5": 0.9})
        with pytest.raises(UserError, match=r"already holds \('e', '5'\)"):
            results.append({"encoder": "e", "k": 5, "temperature": 0.07, "top1": 0.5, "top5": 0.9})


def test_imported_splits_whose_test_labels_train_lacks_are_refused(tmp_path, caplog):
    """Shards catch a val class train lacks; imported stores (no class lists) did not."""
    from embed.from_npy import main as from_npy_main

    rng = np.random.default_rng(0)
    for split, labels in (("train", np.arange(40) % 4), ("val", np.arange(20) % 6)):
        np.save(tmp_path / f"embeddings_i_{split}.npy", rng.normal(size=(len(labels), 3)).astype(np.float32))
        np.save(tmp_path / f"labels_{split}.npy", labels)
    assert from_npy_main([str(tmp_path), "--encoder", "i", "--out", str(tmp_path / "s.zarr")]) == 0
    assert probe_main([str(tmp_path / "s.zarr"), "--encoder", "i", "--out", str(tmp_path / "o"), *FAST]) == 1
    assert "i/val has labels i/train lacks (4, 5)" in caplog.text
    assert knn_main([str(tmp_path / "s.zarr"), "--encoder", "i", "--k", "3"]) == 1
