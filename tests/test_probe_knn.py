"""probe.knn: against brute-force numpy, chance on random features, never an N x N matrix."""

import numpy as np
import pytest
import torch

from embed.store import open_embeddings
from probe.knn import evaluate, main, top_neighbours
from tests.conftest import make_store, random_store


def brute_force(train_x, train_y, test_x, test_y, k, T, classes):
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = b @ a.T  # [Q, N]
    top1 = top5 = 0
    for q in range(len(b)):
        nn = np.argsort(-sims[q], kind="stable")[:k]
        votes = np.zeros(classes)
        np.add.at(votes, train_y[nn], np.exp(sims[q, nn] / T))
        top1 += np.argmax(votes) == test_y[q]
        top5 += votes[test_y[q]] > 0 and (votes > votes[test_y[q]]).sum() < 5
    return top1 / len(b), top5 / len(b)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("knn"), classes=8, dim=12, train_per_class=40,
                      test_per_class=15, seed=4)


def test_matches_brute_force(store):
    tr, te = open_embeddings(store, "toy", "train"), open_embeddings(store, "toy", "val")
    rows = evaluate(tr, te, (1, 5, 20), temperature=0.07, device=torch.device("cpu"))
    for r in rows:
        want = brute_force(np.asarray(tr.embeddings[:]), tr.labels, np.asarray(te.embeddings[:]),
                           te.labels, r["k"], 0.07, 8)
        assert (r["top1"], r["top5"]) == pytest.approx(want)
    assert rows[1]["top1"] > 0.5  # separable classes


@pytest.mark.gpu
def test_cuda_finds_the_cpu_neighbours(store):
    train, test = open_embeddings(store, "toy", "train"), open_embeddings(store, "toy", "val")
    q = torch.nn.functional.normalize(torch.from_numpy(np.asarray(test.embeddings[:])), dim=1)
    s_cpu, i_cpu = top_neighbours(train, q, 20)
    s_gpu, i_gpu = top_neighbours(train, q.cuda(), 20)
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, rtol=1e-4, atol=1e-4)
    assert (i_gpu.cpu() == i_cpu).float().mean() > 0.99  # ties aside


def test_running_top_k_over_small_blocks_equals_one_block(store):
    tr = open_embeddings(store, "toy", "train")
    q = torch.nn.functional.normalize(torch.randn(30, 12), dim=1)
    s1, i1 = top_neighbours(tr, q, 7, block_rows=10_000, query_rows=1000)
    s2, i2 = top_neighbours(tr, q, 7, block_rows=1, query_rows=4)  # chunk-aligned: 1000-row blocks
    torch.testing.assert_close(s1, s2)
    assert (i1 == i2).all()


def test_random_features_give_chance(tmp_path):
    store = random_store(tmp_path, 2000, 1000, 32, seed=0)
    tr, te = open_embeddings(store, "r", "train"), open_embeddings(store, "r", "val")
    r = evaluate(tr, te, (20,), temperature=0.07, device=torch.device("cpu"))[0]
    assert abs(r["top1"] - 0.1) < 0.04 and abs(r["top5"] - 0.5) < 0.06


def test_cli_writes_csv_and_rejects_bad_k(store, tmp_path, capsys):
    assert main([str(store), "--encoder", "toy", "--k", "5,10", "--out", str(tmp_path)]) == 0
    assert "toy k=   5: top-1" in capsys.readouterr().out
    assert (tmp_path / "knn.csv").read_text().splitlines()[0] == "encoder,k,temperature,top1,top5"
    with pytest.raises(SystemExit):
        main([str(store), "--encoder", "toy", "--k", "0"])


def test_the_temperature_weights_the_votes():
    """Three neighbours of class 0 at similarity 0.5, two of class 1 at 0.9: one vote each, or a
    high temperature, elects class 0; DINO's T = 0.07 (weights exp(sim / T)) elects class 1."""
    from probe.knn import vote_accuracy

    sims = torch.tensor([[0.9, 0.9, 0.5, 0.5, 0.5]])
    labels = torch.tensor([[1, 1, 0, 0, 0]])
    y0, y1 = torch.tensor([0]), torch.tensor([1])
    assert vote_accuracy(sims, labels, y1, ks=(5,), num_classes=2, temperature=0.07)[5][0] == 1.0
    assert vote_accuracy(sims, labels, y0, ks=(5,), num_classes=2, temperature=None)[5][0] == 1.0
    assert vote_accuracy(sims, labels, y0, ks=(5,), num_classes=2, temperature=100.0)[5][0] == 1.0
    assert vote_accuracy(sims, labels, y1, ks=(2,), num_classes=2, temperature=100.0)[2][0] == 1.0
