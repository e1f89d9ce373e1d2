"""probe.diagnose: each metric against plain numpy, and the known cases."""

import json

import numpy as np
import pytest
import torch

from embed.store import open_embeddings
from probe.diagnose import main
from probe.metrics import (
    alignment,
    covariance_spectrum,
    effective_rank,
    instance_discrimination,
    knn_sweep,
    linear_cka,
    uniformity,
)
from tests.conftest import make_store, random_store


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_alignment_and_uniformity_against_numpy():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3, 8)).astype(np.float32)
    z = unit(v.astype(np.float64))
    want = np.mean([((z[:, a] - z[:, b]) ** 2).sum(-1).mean() for a, b in ((0, 1), (0, 2), (1, 2))])
    assert alignment(torch.from_numpy(v)) == pytest.approx(want, rel=1e-5)
    assert alignment(torch.from_numpy(np.repeat(v[:, :1], 3, axis=1))) == pytest.approx(0, abs=1e-6)
    x = z[:, 0]
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    off = ~np.eye(len(x), dtype=bool)
    assert uniformity(torch.from_numpy(v[:, 0])) == pytest.approx(np.log(np.exp(-2 * d2[off]).mean()),
                                                                   rel=1e-4)


def test_instance_discrimination():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.normal(size=(40, 16)).astype(np.float32))
    assert instance_discrimination(a, a) == {"top1": 1.0, "top5": 1.0}
    b = torch.from_numpy(rng.normal(size=(40, 16)).astype(np.float32))
    sims = unit(a.numpy()) @ unit(b.numpy()).T
    rank = (sims > np.diag(sims)[:, None]).sum(1)
    assert instance_discrimination(a, b) == {"top1": pytest.approx((rank == 0).mean()),
                                             "top5": pytest.approx((rank < 5).mean())}


def test_effective_rank_against_svd():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 12)) @ np.diag(np.linspace(0.1, 3, 12))
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum()
    ev = covariance_spectrum(torch.from_numpy(x.astype(np.float32)))
    assert effective_rank(ev) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-3)
    assert effective_rank(covariance_spectrum(torch.randn(4000, 10))) > 9.5  # isotropic: ~D
    line = torch.randn(300, 1) * torch.ones(1, 10)
    assert effective_rank(covariance_spectrum(line)) < 1.1  # rank one


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("diag"), classes=5, dim=8, train_per_class=30,
                      test_per_class=12, seed=7)


def brute_knn(train_x, train_y, test_x, test_y, k):
    d = ((test_x[:, None] - train_x[None]) ** 2).sum(-1)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    pred = [np.bincount(train_y[row], minlength=5).argmax() for row in nn]
    return np.mean(np.array(pred) == test_y)


@pytest.mark.parametrize("mode", ["plain", "norm", "shifted-norm"])
def test_knn_sweep_against_brute_force(store, mode):
    tr, te = open_embeddings(store, "toy", "train"), open_embeddings(store, "toy", "val")
    trx, tex = np.asarray(tr.embeddings[:], np.float64), np.asarray(te.embeddings[:], np.float64)
    if mode == "shifted-norm":
        mu = trx.mean(0)
        trx, tex = trx - mu, tex - mu
    if mode != "plain":
        trx, tex = unit(trx), unit(tex)
    acc = knn_sweep(tr, torch.from_numpy(np.asarray(te.embeddings[:])),
                    torch.from_numpy(te.labels.astype(np.int64)), mode=mode, max_k=15)
    for k in (1, 4, 15):
        assert acc[k - 1] == pytest.approx(brute_knn(trx, tr.labels, tex, te.labels, k), abs=1e-9)


def test_knn_on_random_features_is_chance(tmp_path):
    store = random_store(tmp_path, 1500, 600, 16, seed=3)
    tr, te = open_embeddings(store, "r", "train"), open_embeddings(store, "r", "val")
    acc = knn_sweep(tr, torch.from_numpy(np.asarray(te.embeddings[:])),
                    torch.from_numpy(te.labels.astype(np.int64)), mode="norm", max_k=101)
    assert np.abs(acc[[0, 10, 50, 100]] - 0.1).max() < 0.05


def test_cka(tmp_path):
    from embed.from_npy import main as from_npy_main
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    for name, rows in (("a", x), ("b", (x @ q).astype(np.float32)), ("c", rng.normal(size=(400, 5)))):
        d = tmp_path / name
        d.mkdir()
        np.save(d / f"embeddings_{name}_val.npy", rows.astype(np.float32))
        np.save(d / "labels_val.npy", np.zeros(400, dtype=int))
        assert from_npy_main([str(d), "--encoder", name, "--out", str(tmp_path / "s.zarr")]) == 0
    a, b, c = (open_embeddings(tmp_path / "s.zarr", n, "val") for n in "abc")
    assert linear_cka(a, b) == pytest.approx(1.0, abs=1e-6)  # invariant to rotations
    xc = x - x.mean(0)
    yc = np.asarray(c.embeddings[:], np.float64) - np.asarray(c.embeddings[:], np.float64).mean(0)
    want = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(a, c) == pytest.approx(want, rel=1e-5) and linear_cka(a, c) < 0.2
    # the CLI draws the matrix of every encoder holding the split; no train split: no kNN
    assert main([str(tmp_path / "s.zarr"), "--encoder", "a", "--out", str(tmp_path / "d"),
                 "--tsne-classes", "1", "--tsne-per-class", "40"]) == 0
    r = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert r["cka"]["encoders"] == ["a", "b", "c"] and r["cka"]["matrix"][0][1] == pytest.approx(1.0)
    assert "no kNN sweep" in r["knn_note"]
    assert (tmp_path / "d" / "cka.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_writes_json_markdown_and_pngs(store, tmp_path, capsys):
    assert main([str(store), "--encoder", "toy", "--out", str(tmp_path), "--tsne-classes", "5",
                 "--tsne-per-class", "10"]) == 0
    r = json.loads((tmp_path / "diagnostics.json").read_text())
    assert r["rows"] == 60 and r["alignment"] is None and "--views" in r["views_note"]
    assert set(r["knn"]) == {"plain", "norm", "shifted-norm"} and len(r["knn"]["norm"]["top1_by_k"]) == 101
    for png in ("spectrum.png", "tsne.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "effective rank" in (tmp_path / "diagnostics.md").read_text()
