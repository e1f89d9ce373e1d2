"""msnpipe.files, msnpipe.pool, msnpipe.runtime: locks that name their holder, whole lines,
atomic writes, workers that die with their parent, device names."""

import os
import subprocess
import sys
import time

import pytest

from msnpipe.files import Busy, exclusive, whole_lines, writable_dir, write_atomic
from msnpipe.runtime import UserError, pick_device


def test_write_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert not (tmp_path / "m.json.tmp").exists()


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    lock = tmp_path / ".lock"
    with exclusive(lock, "out"):
        with pytest.raises(Busy, match=rf"out is being written by pid {os.getpid()} on .* since"):
            with exclusive(lock, "out"):
                pass
    with exclusive(lock, "out"):  # released on exit
        pass


def test_a_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    lock = tmp_path / ".lock"
    code = ("import sys, time; from pathlib import Path; from msnpipe.files import exclusive\n"
            f"with exclusive(Path({str(lock)!r}), 'x'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Busy, match=f"pid {holder.pid} "):
        with exclusive(lock, "x"):
            pass
    holder.kill()
    holder.wait()
    with exclusive(lock, "x"):  # the kernel dropped the dead holder's lock
        pass


def _open_paths() -> list[str]:
    return [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]


def test_forked_workers_do_not_hold_their_parents_lock(tmp_path):
    # a kill -9 of a shard run, then a rerun at once, was refused while its forked workers,
    # which shared the lock's open file, were still exiting
    from msnpipe.pool import worker_pool
    lock = tmp_path / ".lock"
    with exclusive(lock, "out"), worker_pool(1, method="fork") as pool:
        assert str(lock) in _open_paths()
        assert str(lock) not in pool.submit(_open_paths).result()


def test_whole_lines_cuts_a_line_cut_short(tmp_path):
    path = tmp_path / "j.tsv"
    assert whole_lines(path) == []
    path.write_bytes(b"a\t1\nb\t2\nc\t")
    assert whole_lines(path) == ["a\t1", "b\t2"]
    assert path.read_bytes() == b"a\t1\nb\t2\n"


def test_writable_dir(tmp_path):
    assert writable_dir(tmp_path / "a" / "b", "OUT").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, expected a folder"):
        writable_dir(tmp_path / "f", "OUT")
    with pytest.raises(UserError, match="cannot be created"):
        writable_dir(tmp_path / "f" / "sub", "OUT")


def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
    code = ("import os, time\nfrom msnpipe.pool import worker_pool\n"
            "with worker_pool(2) as pool:\n"
            "    pids = set(pool.map(os.getpid, [], chunksize=1)) | {pool.submit(os.getpid).result() "
            "for _ in range(8)}\n"
            "    print(' '.join(map(str, pids)), flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert workers
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{w}") for w in workers)


def test_pick_device():
    assert str(pick_device("cpu")) == "cpu"
    with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
        pick_device("gpu")
    import torch
    if not torch.cuda.is_available():
        assert str(pick_device("auto")) == "cpu"
        with pytest.raises(UserError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.parametrize("module", ["shard", "shard.verify", "embed", "embed.verify", "embed.info", "probe",
                                    "probe.knn", "probe.msn", "probe.diagnose", "probe.plot", "probe.active",
                                    "bench"])
def test_help_answers_within_a_second(module):
    seconds = []
    for _ in range(2):  # the first run may compile .pyc files
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        seconds.append(time.perf_counter() - t)
        assert r.returncode == 0 and "usage:" in r.stdout
    assert min(seconds) < 1.0, (module, seconds)


def test_the_msnpipe_command_runs_each_stage_module(tmp_path, capsys):
    from msnpipe.cli import COMMANDS, main
    assert main(["--help"]) == 0 and "commands: shard, shard.verify, embed" in capsys.readouterr().out
    assert main(["probe.table", str(tmp_path)]) == 1  # probe.table's own main: nothing to tabulate
    assert "no fewshot.csv, msn.csv, knn.csv or active.csv" in capsys.readouterr().err
    assert main(["prob.knn"]) == 2 and "did you mean probe.knn" in capsys.readouterr().err
    assert main([]) == 2
    import importlib
    assert all(callable(importlib.import_module(m).main) for m in COMMANDS.values())


def test_pyproject_installs_the_msnpipe_command():
    import tomllib
    from pathlib import Path
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"] == {"msnpipe": "msnpipe.cli:main"}
    assert set(meta["tool"]["setuptools"]["packages"]) == {"msnpipe", "shard", "embed", "probe", "bench"}


def test_a_lock_path_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    """A link planted where a lock goes (a shared folder) made the writer truncate its target."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "out").mkdir()
    os.symlink(target, tmp_path / "out" / ".lock")
    with pytest.raises(UserError, match="is a symbolic link, not a lock file"):
        with exclusive(tmp_path / "out" / ".lock", "out"):
            pass
    assert target.read_text() == "keep me\n"


def test_a_lock_path_holding_another_file_is_refused_and_left_as_it_is(tmp_path):
    for name, make in (("hardlink", lambda p: os.link(tmp_path / "precious.txt", p)),
                       ("foreign", lambda p: p.write_text("not a lock: somebody's notes\n"))):
        (tmp_path / "precious.txt").write_text("keep me\n")
        lock = tmp_path / f"{name}.lock"
        make(lock)
        before = lock.read_bytes()
        with pytest.raises(UserError, match="not a lock file msnpipe made"), exclusive(lock, "out"):
            pass
        assert lock.read_bytes() == before and (tmp_path / "precious.txt").read_text() == "keep me\n"
        lock.unlink()


def test_a_lock_file_an_earlier_run_left_is_reused(tmp_path):
    lock = tmp_path / ".lock"
    with exclusive(lock, "out"):
        pass
    assert lock.read_text().startswith("pid ")
    with exclusive(lock, "out"):  # the record of a finished holder is ours to replace
        assert f"pid {os.getpid()} " in lock.read_text()


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "", "/abs", "x\ny", ".hidden"])
def test_a_name_that_becomes_a_path_must_be_plain(name):
    from msnpipe.files import plain_name

    with pytest.raises(UserError, match="--split"):
        plain_name(name, "--split")
    assert plain_name("train", "--split") == "train"
    assert plain_name("vit_s-16.v2", "--encoder") == "vit_s-16.v2"


def _sigint_blocked() -> bool:
    import signal

    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_workers_start_with_ctrl_c_blocked_and_the_parent_keeps_it(method):
    # a Ctrl-C that reached a spawned worker while it imported (before its initializer ignores
    # SIGINT) printed a KeyboardInterrupt traceback beside the parent's one-line message
    from msnpipe.pool import worker_pool

    with worker_pool(1, method=method) as pool:
        assert pool.submit(_sigint_blocked).result()
        assert not _sigint_blocked()
