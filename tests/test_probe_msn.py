"""probe.msn: the MSN protocol on a synthetic subset file, against a direct computation."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from embed.store import open_embeddings
from probe.msn import center_normalize, main, run_subset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.conftest import as_older_version, make_store
    store = make_store(tmp_path_factory.mktemp("msn"), classes=6, dim=10, train_per_class=20,
                       test_per_class=10, seed=2)
    labels = open_embeddings(store, "toy", "train").labels  # from_npy without filepaths: name rows
    names = np.array([f"c{y}/img_{i}.JPEG" for i, y in enumerate(labels)])
    g = as_older_version(store, "toy", "train")
    g.create_array("paths", shape=(len(names),), chunks=(1000,), dtype=str)
    g["paths"][:] = names
    return store


def _subset(store, tmp_path, per_class=2):
    tr = open_embeddings(store, "toy", "train")
    labels = tr.labels
    chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(6)])
    path = tmp_path / f"{per_class}imgs_class.txt"
    path.write_text("".join(f"{tr.paths[i].rsplit('/', 1)[-1]}\n" for i in chosen))
    return path, chosen


def test_center_normalize_rows():
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    y = center_normalize(x)
    np.testing.assert_allclose(y.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1)
    np.testing.assert_allclose(y[0], [-1, 0, 1] / np.sqrt(2))


def test_protocol_against_a_direct_fit(store, tmp_path):
    tr = open_embeddings(store, "toy", "train")
    subset, chosen = _subset(store, tmp_path)
    te = open_embeddings(store, "toy", "val")
    got = run_subset(tr, te, subset, lambd=0.00025)
    x, tx = np.asarray(tr.embeddings[:])[chosen], np.asarray(te.embeddings[:])
    prep = lambda a: normalize(a - a.mean(axis=1, keepdims=True))  # noqa: E731 - cyanure's, by sklearn
    model = LogisticRegression(C=4000, fit_intercept=False, max_iter=1000)  # C = 1 / lambd
    model.fit(prep(x), tr.labels[chosen])
    want = model.score(prep(tx), te.labels)
    assert got["images"] == 12 and got["top1"] == pytest.approx(want, abs=1e-9)
    assert got["top1"] > 1 / 6 + 0.2


def test_missing_names_are_listed(store, tmp_path, caplog):
    subset, _ = _subset(store, tmp_path)
    with open(subset, "a") as f:
        f.write("n99999999_1.JPEG\nn99999999_2.JPEG\n")
    assert main([str(store), "--encoder", "toy", "--subset", str(subset), "--backend", "sklearn"]) == 1
    assert "2 of 14 names are not in toy/train (e.g. n99999999_1.JPEG, n99999999_2.JPEG)" in caplog.text


def test_cli_appends_csv(store, tmp_path, capsys):
    subset, _ = _subset(store, tmp_path, per_class=1)
    assert main([str(store), "--encoder", "toy", "--subset", str(subset), "--backend", "sklearn",
                 "--out", str(tmp_path)]) == 0
    assert f"toy {tmp_path.name}/1imgs_class.txt (6 images): top-1" in capsys.readouterr().out
    assert (tmp_path / "msn.csv").read_text().startswith("encoder,subset,images,lambd,top1")


def test_a_folder_from_before_converged_fits_is_not_extended(store, tmp_path, caplog):
    """msn.json written when fits stopped at tol 1e-4 has no `solve` in its identity: its rows
    are another solver's, so a run adding to them is refused, naming the difference."""
    import json

    subset, _ = _subset(store, tmp_path, per_class=1)
    args = [str(store), "--encoder", "toy", "--subset", str(subset), "--backend", "sklearn",
            "--out", str(tmp_path)]
    assert main(args) == 0
    record = json.loads((tmp_path / "msn.json").read_text())
    assert record["identity"].pop("solve") == "optimum"
    (tmp_path / "msn.json").write_text(json.dumps(record))
    assert main(args) == 1
    assert "solve: None != 'optimum'" in caplog.text
