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


@pytest.fixture
def drawn(monkeypatch):
    """The figures probe.plot saves, kept for inspection: [(figure, path)]."""
    import probe.plot
    kept, save = [], probe.plot._save

    def keep(fig, out, **kw):
        kept.append((fig, out))
        return save(fig, out, **kw)

    monkeypatch.setattr(probe.plot, "_save", keep)
    return kept


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


def test_the_plot_draws_the_means_with_their_bands(results, tmp_path, drawn):
    assert plot_main([str(results), "--out", str(tmp_path / "a.png"), "--logx"]) == 0
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG
    (fig, out), = drawn
    want = curves(load([results]), best_c=False)
    acc, loglik = fig.axes
    assert acc.get_xscale() == "log" and {ln.get_label() for ln in loglik.get_lines()} == set(want)
    for ax, metric in ((acc, "acc"), (loglik, "loglik")):
        for line, band in zip(ax.get_lines(), ax.collections):
            c = want[line.get_label()]
            np.testing.assert_allclose(line.get_xydata(), np.c_[c["n_labels"], c[f"{metric}_mean"]])
            ys = band.get_paths()[0].vertices[:, 1]  # the band spans mean - s.e. to mean + s.e.
            lo, hi = c[f"{metric}_mean"] - c[f"{metric}_sem"], c[f"{metric}_mean"] + c[f"{metric}_sem"]
            assert ys.min() == pytest.approx(lo.min()) and ys.max() == pytest.approx(hi.max())


def test_diagnose_figures_draw_what_they_name(tmp_path, drawn):
    from probe.plot import cka_plot, spectrum_plot, tsne_map
    ev = np.array([5.0, 2.0, 0.5, 1e-15])
    spectrum_plot(ev, tmp_path / "s.png", erank=2.34)
    matrix = np.array([[1.0, 0.3], [0.3, 1.0]])
    cka_plot(["a", "b"], matrix, tmp_path / "c.png")
    x = np.random.default_rng(0).normal(size=(30, 5))
    tsne_map(x, np.repeat([0, 1, 2], 10), tmp_path / "t.png")
    (spectrum, _), (cka, _), (tsne, _) = drawn
    line, = spectrum.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), np.maximum(ev, 1e-12))
    assert "2.3" in spectrum.axes[0].get_title()
    np.testing.assert_allclose(cka.axes[0].images[0].get_array(), matrix)
    points = tsne.axes[0].collections[0]
    assert points.get_offsets().shape == (30, 2) and len(np.unique(points.get_array())) == 3


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
    assert "no fewshot.csv, active.csv or testing_seedNN.csv found in" in capsys.readouterr().err
    assert table_main([str(tmp_path)]) == 1
    assert "no fewshot.csv, msn.csv, knn.csv or active.csv in" in capsys.readouterr().err


def test_table(results, capsys):
    assert table_main([str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| encoder | 1/class | 2/class | 5/class | kNN k=5 |"
    assert out[2].startswith("| toy | ")
