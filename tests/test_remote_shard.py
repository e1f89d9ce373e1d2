"""python -m shard to object storage, against a real S3 API (moto's server on a local port):
the published split is the local run's byte for byte, a kill resumes, faults are one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from shard.__main__ import main as shard_main
from shard.reader import list_splits, open_split
from tests.conftest import make_folder, s3_environment, tree_bytes

ROOT = Path(__file__).parents[1]


@pytest.fixture
def src(tmp_path):
    make_folder(tmp_path / "src" / "train", ["a", "b", "c"], per_class=7)
    make_folder(tmp_path / "src" / "val", ["a", "b", "c"], per_class=3)
    return tmp_path / "src"


def test_a_published_split_is_the_local_one_byte_for_byte(src, tmp_path, s3):
    args = ["--samples-per-shard", "4", "--workers", "2"]
    assert shard_main([str(src), str(tmp_path / "local"), *args]) == 0
    url = f"{s3}/shards"
    assert shard_main([str(src), url, *args, "--stage", str(tmp_path / "stage")]) == 0
    published = tree_bytes(url)
    assert published == tree_bytes(tmp_path / "local")  # tars, indexes, samples.tsv, manifests: no lock left
    assert not list((tmp_path / "stage").rglob("*.tar"))  # the stage is emptied once published
    split = open_split(url, "train", cache=tmp_path / "cache")
    assert split.url == f"{url}/train" and split.num_samples == 21 and split.labels().tolist()[:4] == [0] * 4
    assert shard_main([str(src), url, *args]) == 0  # a second run finds it published and does nothing


def test_wrong_credentials_or_a_missing_bucket_are_one_line_before_any_work(src, tmp_path, s3, monkeypatch,
                                                                            caplog):
    assert shard_main([str(src), "s3://no-such-bucket/shards"]) == 1
    assert "s3://no-such-bucket/shards: the bucket 'no-such-bucket' does not exist" in caplog.text
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    assert shard_main([str(src), f"{s3}/shards"]) == 1
    assert f"{s3}/shards: access denied" in caplog.text and "AWS_ACCESS_KEY_ID" in caplog.text
    assert "wrong" not in caplog.text and "Traceback" not in caplog.text  # no secret in a log line
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.tar"))


KILL_AFTER_UPLOADS = """
import os, sys
import shard.publish as p
real, count = p.remote.put_file, [0]
def put(source, url):
    real(source, url)
    if url.endswith(".tar"):
        count[0] += 1
        if count[0] == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), 9)
p.remote.put_file = put
from shard.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_mid_upload_then_rerun_publishes_the_same_bytes(src, tmp_path, s3, s3_server):
    args = ["--samples-per-shard", "2", "--workers", "1"]
    assert shard_main([str(src), str(tmp_path / "local"), *args]) == 0
    url, stage = f"{s3}/shards", tmp_path / "stage"
    env = dict(__import__("os").environ) | s3_environment(s3_server) | {"KILL_AFTER": "3"}
    cmd = [sys.executable, "-c", KILL_AFTER_UPLOADS, str(src), url, *args, "--stage", str(stage)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    half = tree_bytes(url)
    tars = sum(k.endswith(".tar") for k in half)  # uploads run side by side: one more may have landed
    assert not any(k.endswith("manifest.json") for k in half) and 3 <= tars < 11
    assert shard_main([str(src), url, *args, "--stage", str(stage)]) == 0
    assert tree_bytes(url) == tree_bytes(tmp_path / "local")


def test_a_server_gone_mid_run_is_retried_then_one_line_naming_the_object(src, tmp_path, s3, s3_server,
                                                                           monkeypatch, caplog):
    """The object store stops answering after the first shard: each upload is retried, then the
    run stops in one line naming the object; no manifest, so nothing unfinished reads as a split."""
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    import shard.publish as publish
    from msnpipe import remote

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # a second front to the same buckets, one this test can stop
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    # s3fs and botocore retry under ours; once each keeps the test short, ours still counts to 5
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    real, uploads, stopped = remote.put_file, [], []

    def put(source, url):
        if uploads and not stopped:
            stopped.append(url)
            server.stop()  # after the first object: the server is gone
        real(source, url)
        uploads.append(url)

    monkeypatch.setattr(publish.remote, "put_file", put)
    try:
        code = shard_main([str(src), f"{s3}/shards", "--samples-per-shard", "4", "--workers", "1",
                           "--stage", str(tmp_path / "stage")])
    finally:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint"])  # the server still up
        s3fs.S3FileSystem.clear_instance_cache()
    assert code == 1
    line = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    assert line.startswith(f"{s3}/shards/train/") and "5 times; nothing unfinished was published" in line
    assert "Traceback" not in caplog.text and 1 <= len(uploads) <= 4  # those in flight at the stop
    names = set(remote.sizes(f"{s3}/shards/train"))  # what the stopped server had taken: no record
    assert names and not names & {"manifest.json", "samples.tsv"}
    assert list_splits(f"{s3}/shards") == []
