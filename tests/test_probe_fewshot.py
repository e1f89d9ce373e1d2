"""python -m probe: the reference's draws and accuracies, resume, seed layout, bad input."""

import csv
from pathlib import Path

import numpy as np
import pytest

from bench.reference_probe import reference_curve, sample_n_per_class
from embed.store import open_embeddings
from probe.__main__ import main
from probe.data import ClassSampler, mean_std, read_rows
from probe.fewshot import draws
from tests.conftest import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("probe"), classes=10, dim=16, train_per_class=30)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("seed", [0, 1, 19])
def test_draws_are_the_references(seed):
    labels = np.random.default_rng(5).integers(0, 7, 300)  # unequal class sizes, shuffled
    ours = list(draws(ClassSampler(labels), seed, tuple(range(1, 6))))
    rng = np.random.default_rng(seed)
    for n, inds in ours:
        np.testing.assert_array_equal(inds, sample_n_per_class(labels, n, rng))


def test_draws_for_some_n_still_consume_the_rng_like_the_reference():
    labels = np.repeat(np.arange(4), 20)
    only = dict(draws(ClassSampler(labels), 3, (2, 5)))
    every = dict(draws(ClassSampler(labels), 3, tuple(range(1, 6))))
    assert only.keys() == {2, 5}
    np.testing.assert_array_equal(only[5], every[5])


def test_statistics_and_rows(store):
    e = open_embeddings(store, "toy", "train")
    x = np.asarray(e.embeddings[:])
    mean, std = mean_std(e)
    np.testing.assert_allclose(mean, x.mean(0, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, x.std(0, keepdims=True), rtol=1e-5)
    idx = np.array([7, 3, 250, 3])
    np.testing.assert_allclose(read_rows(e, idx, mean, std=std), (x[idx] - mean) / std, rtol=1e-5)


def test_accuracy_matches_the_reference_script(store, tmp_path):
    assert main([str(store), "--encoder", "toy", "--per-class", "1-4", "--seeds", "0-2",
                 "--backend", "sklearn", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "fewshot.csv")
    assert len(rows) == 12 and set(rows[0]) == {"encoder", "seed", "n_per_class", "n_labels",
                                                "test_acc", "test_loglik", "C", "backend", "fit_seconds",
                                                "n_iter", "grad_norm", "converged"}
    assert all(r["converged"] == "1" and float(r["grad_norm"]) < 1e-4 for r in rows)  # to the optimum
    tr, te = open_embeddings(store, "toy", "train"), open_embeddings(store, "toy", "val")
    for seed in range(3):
        ref = reference_curve(np.asarray(tr.embeddings[:]), tr.labels, np.asarray(te.embeddings[:]),
                              test_y=te.labels, seed=seed, n_labels_end=40)
        ours = [r for r in rows if int(r["seed"]) == seed]
        assert [int(r["n_labels"]) for r in ours] == [r["n_labels"] for r in ref] == [10, 20, 30, 40]
        for o, r in zip(ours, ref):
            assert abs(float(o["test_acc"]) - r["test_acc"]) <= 0.005
            assert abs(float(o["test_loglik"]) - r["test_loglik"]) <= 0.01


def test_rerun_skips_done_rows_and_finishes_a_cut_csv(store, tmp_path):
    args = [str(store), "--encoder", "toy", "--per-class", "1-3", "--seeds", "0-1", "--backend",
            "sklearn", "--out", str(tmp_path)]
    assert main(args) == 0
    full = (tmp_path / "fewshot.csv").read_text()
    assert main(args) == 0
    assert (tmp_path / "fewshot.csv").read_text() == full
    lines = full.splitlines(keepends=True)
    (tmp_path / "fewshot.csv").write_text("".join(lines[:3]) + lines[3][:10])  # killed mid-write
    assert main(args) == 0
    rows = read_csv(tmp_path / "fewshot.csv")
    assert sorted((r["seed"], r["n_per_class"]) for r in rows) == sorted(
        (r["seed"], r["n_per_class"]) for r in csv.DictReader(full.splitlines()))


def test_C_sweep_and_seed_layout(store, tmp_path):
    assert main([str(store), "--encoder", "toy", "--per-class", "1,2", "--seeds", "0", "--C", "0.1,1",
                 "--backend", "sklearn", "--seed-layout", "--out", str(tmp_path)]) == 0
    assert sorted({r["C"] for r in read_csv(tmp_path / "fewshot.csv")}) == ["0.1", "1.0"]
    text = (tmp_path / "toy_C1" / "testing_seed00.csv").read_text().splitlines()
    assert text[0] == "n_labels,test_acc,test_loglik" and text[1].startswith("010,0.")
    assert len(text) == 3


def test_bad_input_gets_one_clear_line(store, tmp_path, caplog):
    assert main([str(store), "--encoder", "nope", "--out", str(tmp_path)]) == 1
    assert "no nope/train (the store holds: toy/train, toy/val)" in caplog.text
    assert main([str(store), "--encoder", "toy", "--per-class", "31", "--backend", "sklearn",
                 "--out", str(tmp_path)]) == 1
    assert "class 0 has only 30 samples in train" in caplog.text
    from embed.store import open_group
    open_group(store, "toy", "val", mode="a").attrs.update({"complete": False})
    try:
        assert main([str(store), "--encoder", "toy", "--out", str(tmp_path)]) == 1
        assert "toy/val is incomplete" in caplog.text
    finally:
        open_group(store, "toy", "val", mode="a").attrs.update({"complete": True})


@pytest.mark.parametrize("backend", ["sklearn", "numpy"])  # the CPU backends, one fit at a time
def test_parallel_fits_give_the_same_rows(store, tmp_path, monkeypatch, caplog, backend):
    args = [str(store), "--encoder", "toy", "--per-class", "1-3", "--seeds", "0-5", "--backend", backend]
    assert main([*args, "--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "small")]) == 0
    assert "go to 2 processes" not in caplog.text  # small fits: no pool worth starting
    monkeypatch.setattr("probe.fewshot.POOL_AFTER_S", 0.0)  # every fit "pays" for the pool
    monkeypatch.setattr("probe.fewshot.POOL_START_S", 0.0)
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    assert "the 5 left go to 2 processes" in caplog.text
    drop = lambda rows: [{k: v for k, v in r.items() if k != "fit_seconds"} for r in rows]  # noqa: E731
    one, two = (read_csv(tmp_path / d / "fewshot.csv") for d in ("one", "two"))
    assert drop(one) == drop(two)


def test_fewer_fits_left_than_jobs_still_go_to_a_pool(store, tmp_path, monkeypatch, caplog):
    # 16 cores and a 12-fit subset of slow fits ran one after another in one process (115 s
    # where 16 processes took 22 s): the pool must not wait for more fits than workers
    monkeypatch.setattr("probe.fewshot.POOL_AFTER_S", 0.0)
    monkeypatch.setattr("probe.fewshot.POOL_START_S", 0.0)
    args = [str(store), "--encoder", "toy", "--per-class", "1-3", "--seeds", "0-5", "--backend", "sklearn"]
    assert main([*args, "--jobs", "16", "--out", str(tmp_path)]) == 0
    assert "the 5 left go to 5 processes" in caplog.text  # a chain (a seed's label counts) each
    assert len(read_csv(tmp_path / "fewshot.csv")) == 18


@pytest.mark.parametrize("each, left, jobs, workers", [
    (9.6, 11, 16, 11),  # the 1000-class subset on 16 cores: a process per fit
    (9.6, 40, 16, 16),
    (0.05, 2, 16, 0),  # two quick fits left: starting processes costs more than it saves
    (0.05, 500, 2, 2),
    (9.6, 1, 16, 0),  # one fit left: nothing to share
    (9.6, 11, 1, 0)])
def test_the_pool_starts_when_it_saves_more_than_it_costs(each, left, jobs, workers):
    from probe.fewshot import POOL_AFTER_S, pool_workers
    done = 1 + int(POOL_AFTER_S / each)  # enough fits here to have passed POOL_AFTER_S
    assert pool_workers(spent=each * done, done=done, left=left, jobs=jobs) == workers


@pytest.mark.parametrize("backend, absent", [("sklearn", "torch"), ("torch", "sklearn")])
def test_a_backend_imports_only_what_it_needs(store, tmp_path, backend, absent):
    import subprocess
    import sys
    args = [str(store), "--encoder", "toy", "--per-class", "1-2", "--seeds", "0", "--backend", backend,
            "--device", "cpu", "--out", str(tmp_path)]
    code = f"import sys; from probe.__main__ import main; print(main({args!r}), {absent!r} in sys.modules)"
    root = Path(__file__).parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert r.stdout.split() == ["0", "False"], r.stderr[-2000:]


def test_a_pooled_fit_carries_its_rows_not_the_test_split(store, tmp_path, monkeypatch):
    """Each pooled task once pickled the whole test matrix (205 MB at ImageNet val, D=1024): it goes
    to each worker once, with the pool, and a task holds only its own rows."""
    import pickle

    import probe.fewshot as fewshot

    sizes, real = [], fewshot.ordered_map

    def measured(pool, fn, items, **kw):
        def recorded():
            for item in items:
                sizes.append(len(pickle.dumps(item)))
                yield item
        return real(pool, fn, recorded(), **kw)

    monkeypatch.setattr(fewshot, "ordered_map", measured)
    monkeypatch.setattr(fewshot, "POOL_AFTER_S", 0.0)
    monkeypatch.setattr(fewshot, "POOL_START_S", 0.0)
    args = [str(store), "--encoder", "toy", "--per-class", "1-3", "--seeds", "0-5", "--backend", "numpy"]
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "pooled")]) == 0
    from embed.store import open_embeddings

    n, d = open_embeddings(store, "toy", "val").shape
    chain_bytes = (1 + 2 + 3) * 10 * (d * 4 + 8)  # a seed's rows and labels at 1-3 per class, 10 classes
    assert len(sizes) == 5 and max(sizes) < chain_bytes + 1000 < chain_bytes + n * d * 4, (sizes, chain_bytes)
    assert main([*args, "--jobs", "1", "--out", str(tmp_path / "here")]) == 0
    drop = lambda rows: [{k: v for k, v in r.items() if k != "fit_seconds"} for r in rows]  # noqa: E731
    pooled, here = (read_csv(tmp_path / d / "fewshot.csv") for d in ("pooled", "here"))
    assert drop(pooled) == drop(here)


def test_order_seed_draws_the_images_the_reference_draws(tmp_path, tiny_encoders):
    """The reference's evaluate_embeddings.py picks rows by position in its own files, whose rows
    are in its DistributedSampler's order: with --order seed our draws are its images, draw for draw."""
    from bench.reference_probe import reference_curve, sample_n_per_class
    from embed.__main__ import main as embed_main
    from embed.export import main as export_main
    from embed.store import open_embeddings, seed_order
    from probe.data import ClassSampler
    from shard.__main__ import main as shard_main
    from tests.conftest import make_folder

    make_folder(tmp_path / "src" / "train", ["a", "b", "c", "d"], per_class=6)
    make_folder(tmp_path / "src" / "val", ["a", "b", "c", "d"], per_class=3, seed=500)
    assert shard_main([str(tmp_path / "src"), str(tmp_path / "shards"), "--workers", "1"]) == 0
    for split in ("train", "val"):
        assert embed_main([str(tmp_path / "shards"), "--split", split, "--encoder", "tiny_a", "--weights",
                           "random", "--out", str(tmp_path / "s.zarr"), "--batch-size", "8"]) == 0
        assert export_main([str(tmp_path / "s.zarr"), "--encoder", "tiny_a", "--split", split, "--out",
                            str(tmp_path / "seed"), "--order", "seed"]) == 0
    e = open_embeddings(tmp_path / "s.zarr", "tiny_a", "train")
    theirs = np.load(tmp_path / "seed" / "labels_train.npy")
    their_paths = (tmp_path / "seed" / "filepaths_train.txt").read_text().splitlines()
    sampler = ClassSampler(e.labels, order=seed_order(e.shape[0]))
    for seed in range(4):
        rng_ref, rng_ours = np.random.default_rng(seed), np.random.default_rng(seed)
        for n in (1, 2, 3):
            want = [their_paths[j] for j in sample_n_per_class(theirs, n, rng_ref)]
            assert [e.paths[i] for i in sampler.draw(n, rng_ours)] == want, (seed, n)
    # and the curve: python -m probe --order seed against the reference's loop on its own files
    assert main([str(tmp_path / "s.zarr"), "--encoder", "tiny_a", "--out", str(tmp_path / "p"), "--per-class",
                 "1-3", "--seeds", "0-1", "--order", "seed", "--protocol", "seed", "--jobs", "1"]) == 0
    ours = read_csv(tmp_path / "p" / "fewshot.csv")
    x, y = np.load(tmp_path / "seed" / "embeddings_tiny_a_train.npy"), theirs
    tx, ty = (np.load(tmp_path / "seed" / f) for f in ("embeddings_tiny_a_val.npy", "labels_val.npy"))
    for seed in (0, 1):
        ref = reference_curve(x, y, tx, test_y=ty, seed=seed, n_labels_end=12)
        got = [r for r in ours if int(r["seed"]) == seed]
        # --protocol seed: its numbers bit for bit (they once differed by 0.0015 in log-likelihood,
        # our statistics summed in another order)
        assert [float(r["test_acc"]) for r in got] == [r["test_acc"] for r in ref]
        assert [float(r["test_loglik"]) for r in got] == [r["test_loglik"] for r in ref]


def test_a_constant_feature_is_standardized_to_zero_not_divided_by_zero(tmp_path):
    """The reference sets a std below float32 epsilon to 1; without it a constant column is NaN."""
    from embed.from_npy import main as from_npy_main
    from embed.store import open_embeddings
    from probe.data import load_standardized, mean_std

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    x[:, 2] = 7.0
    for split in ("train", "val"):
        np.save(tmp_path / f"embeddings_c_{split}.npy", x)
        np.save(tmp_path / f"labels_{split}.npy", np.arange(30) % 3)
    assert from_npy_main([str(tmp_path), "--encoder", "c", "--out", str(tmp_path / "s.zarr")]) == 0
    train = open_embeddings(tmp_path / "s.zarr", "c", "train")
    mean, std = mean_std(train)
    assert std[0, 2] == 1 and mean[0, 2] == 7
    z = load_standardized(train, mean, std).x
    assert np.isfinite(z).all() and (z[:, 2] == 0).all()
    np.testing.assert_allclose(z[:, 0], (x[:, 0] - x[:, 0].mean()) / x[:, 0].std(), rtol=1e-5, atol=1e-6)
