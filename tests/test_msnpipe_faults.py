"""Expected faults, as a user meets them: a full disk, Ctrl-C and SIGTERM. Each is one line
naming the file or the way out, a non-zero exit, and a rerun finishes the job; they were
tracebacks (31 cases of the integrity audit), or a 35-86 line KeyboardInterrupt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_folder, make_store, random_store

ROOT = Path(__file__).parents[1]
# writes past the file-size limit fail with EFBIG (SIGXFSZ ignored), as they would on a full disk
LIMITED = """import resource, signal, sys, runpy
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _run(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", LIMITED, str(limit), *args] if limit else [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_line(run: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 1, no traceback, and the words (the file, the way out) in the error."""
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert all(w in run.stderr for w in words), run.stderr[-3000:]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    make_folder(root / "train", ["a", "b", "c"], per_class=10, w=200, h=150)
    make_folder(root / "val", ["a", "b", "c"], per_class=4, w=200, h=150)
    return root


def test_a_full_disk_during_shard_is_one_line_and_the_rerun_finishes(images, tmp_path):
    out, args = tmp_path / "out", ["--samples-per-shard", "8", "--workers", "2"]
    _one_line(_run("shard", str(images), str(out), *args, limit=60_000), "File too large", "free space",
              f"{out}/train/")
    assert not (out / "train" / "manifest.json").exists()
    assert _run("shard", str(images), str(out), *args).returncode == 0
    assert _run("shard.verify", str(out)).returncode == 0


def test_a_full_disk_during_embed_is_one_line_and_the_rerun_finishes(images, tmp_path):
    shards, store = tmp_path / "shards", tmp_path / "s.zarr"
    assert _run("shard", str(images), str(shards), "--splits", "val", "--samples-per-shard", "4",
                "--workers", "1").returncode == 0
    args = ["embed", str(shards), "--split", "val", "--encoder", "vits16_800ep", "--weights", "random",
            "--out", str(store), "--batch-size", "4"]
    _one_line(_run(*args, limit=3_000), "free space", str(store))
    assert _run(*args).returncode == 0
    assert _run("embed.verify", str(store)).returncode == 0


def test_a_full_disk_during_probe_is_one_line_and_the_rerun_finishes(tmp_path):
    store = make_store(tmp_path, classes=5, dim=8, train_per_class=12, test_per_class=4)
    args = ["probe", str(store), "--encoder", "toy", "--out", str(tmp_path / "probe"), "--seeds", "0-30",
            "--backend", "numpy"]
    _one_line(_run(*args, limit=3_000), "free space", "probe/fewshot.")  # .json or .csv, whichever fills it
    assert _run(*args).returncode == 0


def _slow(kind: str, tmp_path: Path, images: Path) -> tuple[list[str], Path]:
    """A command that runs long enough to be interrupted, and the file that shows it is working."""
    if kind == "probe":  # fits in worker processes
        store = random_store(tmp_path, n_train=1200, n_val=600, dim=96, classes=60)
        return ["probe", str(store), "--encoder", "r", "--out", str(tmp_path / "o"), "--seeds", "0-999",
                "--backend", "sklearn", "--jobs", "2"], tmp_path / "o" / "fewshot.csv"
    shards, store = tmp_path / "shards", tmp_path / "s.zarr"
    assert _run("shard", str(images), str(shards), "--splits", "train", "--samples-per-shard", "4",
                "--workers", "1").returncode == 0
    return ["embed", str(shards), "--split", "train", "--encoder", "vits16_800ep", "--weights", "random",
            "--out", str(store), "--batch-size", "2"], store / "vits16_800ep"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["probe", "embed"])
@pytest.mark.parametrize("sig, code, words", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_are_one_line_and_the_rerun_goes_on(images, tmp_path, kind, sig, code, words):
    args, working = _slow(kind, tmp_path, images)
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not working.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole process group, workers included
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and words in err and "rerun the same command" in err, err[-3000:]
    assert not [line for line in err.splitlines() if "Traceback" in line or "KeyboardInterrupt" in line], err
    if kind == "embed":
        assert _run(*args).returncode == 0
