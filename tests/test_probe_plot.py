"""probe.plot and probe.table: curves from our CSV and the reference's files, PNGs, tables."""

import numpy as np
import pytest

from probe.__main__ import main as probe_main
from probe.knn import main as knn_main
from probe.plot import curves, load
from probe.plot import main as plot_main
from probe.table import main as table_main
from tests.conftest import make_store

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    store = make_store(root, classes=5, dim=8, train_per_class=12)
    out = root / "probe"
    assert probe_main([str(store), "--encoder", "toy", "--per-class", "1,2,5", "--seeds", "0-2",
                       "--C", "0.1,1", "--backend", "sklearn", "--seed-layout", "--out", str(out)]) == 0
    assert knn_main([str(store), "--encoder", "toy", "--k", "5", "--out", str(out)]) == 0
    return out


def test_mean_and_standard_error_across_seeds(results):
    rows = load([results])
    lines = curves(rows, best_c=False)
    assert set(lines) == {"toy, C=0.1", "toy, C=1"}
    c = lines["toy, C=1"]
    assert c["n_labels"].tolist() == [5, 10, 25]
    accs = [100 * r["acc"] for r in rows if r["C"] == 1.0 and r["n_labels"] == 10]
    assert c["acc_mean"][1] == pytest.approx(np.mean(accs))
    assert c["acc_sem"][1] == pytest.approx(np.std(accs, ddof=1) / np.sqrt(3))


def test_best_c_picks_the_higher_mean(results):
    rows = load([results])
    best = curves(rows, best_c=True)["toy (best C per label count)"]
    per_c = curves(rows, best_c=False)
    want = np.maximum(per_c["toy, C=0.1"]["acc_mean"], per_c["toy, C=1"]["acc_mean"])
    np.testing.assert_allclose(best["acc_mean"], want)


def test_png_from_ours_and_from_reference_layout(results, tmp_path):
    assert plot_main([str(results), "--out", str(tmp_path / "a.png"), "--logx"]) == 0
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG
    ref_dir = results / "toy_C1"  # reference layout written by --seed-layout
    assert sorted(p.name for p in ref_dir.iterdir()) == [f"testing_seed0{i}.csv" for i in range(3)]
    lines = curves(load([ref_dir]), best_c=False)
    ours = curves(load([results]), best_c=False)["toy, C=1"]
    np.testing.assert_allclose(lines["toy_C1"]["acc_mean"], ours["acc_mean"], atol=0.01)  # 4 decimals
    assert plot_main([str(results), str(ref_dir), "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").stat().st_size > 10_000


def test_plot_and_table_refuse_empty_input(tmp_path, capsys):
    assert plot_main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert "no fewshot.csv or testing_seedNN.csv" in capsys.readouterr().err
    assert table_main([str(tmp_path)]) == 1


def test_table(results, capsys):
    assert table_main([str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| encoder | 1/class | 2/class | 5/class | kNN k=5 |"
    assert out[2].startswith("| toy | ")
