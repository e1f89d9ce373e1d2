"""bench.demo at a reduced size: every stage runs through its CLI and leaves its outputs."""

import contextlib
import csv
import os
import sys

import pytest

from bench.demo import run_demo
from embed.store import open_embeddings
from shard.reader import open_split


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory) -> tuple[dict, object, str]:
    """One local demo run, shared by the tests here: (where, its folder, what it printed)."""
    root = tmp_path_factory.mktemp("demo")
    saved = os.dup(1)
    sys.stdout.flush()
    # the steps are subprocesses writing to fd 1; the demo's own lines go through sys.stdout
    with open(root / "stdout.txt", "a", buffering=1) as log, contextlib.redirect_stdout(log):
        os.dup2(log.fileno(), 1)
        try:
            where = run_demo(root, classes=3, train=4, val=2, seeds=2, per_class=2)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    return where, root, (root / "stdout.txt").read_text()


@pytest.mark.slow
def test_demo_end_to_end(local_demo):
    where, tmp_path, out = local_demo
    assert "RANDOM weights saved in the official MSN layout" in out and "make weights" in out
    train = open_split(tmp_path / "shards", "train")
    assert train.num_samples == 12 and len(train.skipped) == 2  # the two broken files
    e = open_embeddings(where["store"], "vits16_800ep", "val")
    assert e.shape == (6, 384) and e.attrs["random_weights"] and e.attrs["drift"]["images"] == 6
    with open(where["csv"], newline="") as f:
        assert len(list(csv.DictReader(f))) == 4  # 2 seeds x 2 label counts
    assert where["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "| vits16_800ep |" in out
    assert e.views.shape == (6, 2, 384) and "alignment (2 views)" in where["diagnose"].read_text()
    with open(tmp_path / "active" / "active.csv", newline="") as f:
        active = list(csv.DictReader(f))
    assert len(active) == 4 * 2 * 4  # 4 strategies x 2 seeds x rounds 0-3
    assert {int(r["n_labels"]) for r in active} == {3, 6, 9, 12}
    assert where["active"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_demo_with_its_data_in_a_bucket_equals_the_local_run(tmp_path, s3, local_demo):
    """`--data s3://...`: the shards byte for byte, the rows and the curves of the local run."""
    import numpy as np

    from probe.results import read_results
    from tests.conftest import tree_bytes

    local, local_root, _ = local_demo
    remote = run_demo(tmp_path / "remote", classes=3, train=4, val=2, seeds=2, per_class=2, data=f"{s3}/demo")
    assert tree_bytes(f"{s3}/demo/shards") == tree_bytes(local_root / "shards")
    for split in ("train", "val"):
        a, b = (open_embeddings(w["store"], "vits16_800ep", split) for w in (local, remote))
        assert np.array_equal(np.asarray(a.embeddings[:]), np.asarray(b.embeddings[:]))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "fit_seconds"} for r in rows]  # noqa: E731
    assert drop(read_results(local["csv"])) == drop(read_results(remote["csv"]))
