"""python -m bench scale at a toy size: both processes run, their peak memory is each one's own,
the distances it reports are the ones between the curves' files, and every backend's certified
curve lies at the first one's optimum."""

import pytest

from bench.__main__ import main as bench_main
from bench.probe_scale import peak_run, scale_rows
from probe.results import read_results


def _accuracies(path) -> dict[int, float]:
    return {int(r["n_per_class"]): float(r["test_acc"]) for r in read_results(path)}


def test_the_scale_rows_compare_each_backend_and_the_seed_with_the_optimum(tmp_path):
    rows = scale_rows(tmp_path, dim=16, classes=12, train=30, val=10, per_class=3,
                      backends=("numpy", "sklearn", "torch"))
    assert [r.settings["backend"] for r in rows] == ["numpy", "sklearn", "torch"]
    optimum = _accuracies(tmp_path / "probe_scale16_numpy" / "fewshot.csv")
    lines = (tmp_path / "scale16_npy" / "scale16" / "testing_seed00.csv").read_text().split()[1:]
    seed = {int(n) // 12: float(acc) for n, acc, _ in (line.split(",") for line in lines)}
    assert sorted(optimum) == sorted(seed) == [1, 2, 3]
    for row in rows:
        s = row.settings
        assert s["fits"] == s["converged_fits"] == 3
        ours = _accuracies(tmp_path / f"probe_scale16_{s['backend']}" / "fewshot.csv")
        assert s["max_abs_acc_diff"] == round(max(abs(ours[n] - optimum[n]) for n in ours), 4)
        assert s["max_abs_acc_diff"] <= 0.001 and s["max_abs_loglik_diff"] <= 0.002  # the target
        assert s["seed_max_abs_acc_diff"] == round(max(abs(optimum[n] - seed[n]) for n in ours), 4)
        # a ratio of rates (items / seconds): the time ratio up to the last bit of rounding
        assert row.ratio == pytest.approx(row.reference["median_s"] / row.ours["median_s"], rel=1e-12)
    assert len({r.reference["median_s"] for r in rows}) == 1  # one seed-script run for all


@pytest.mark.parametrize("argv, named", [
    (["scale", "--backends", "numpy,bogus"], "'numpy,bogus'"),
    (["scale", "--backends", "numpy,numpy"], "'numpy,numpy'"),
    (["scale", "--dim", "0"], "--dim 0"),
    (["probe", "--backends", "numpy"], "not of probe"),
])
def test_bad_scale_options_are_one_error_naming_the_value(argv, named, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench_main([*argv, "--results", str(tmp_path)])
    assert e.value.code == 2 and named in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing ran, nothing recorded


def test_peak_memory_is_the_childs_own():
    """A small child reports its own peak, not the parent's (which ru_maxrss would carry over)."""
    big = b"1" * (600 << 20)  # touched: the parent's resident set is over 600 MB
    _, peak = peak_run("json.tool", ["--help"])
    assert len(big) and 0.001 < peak < 0.2
