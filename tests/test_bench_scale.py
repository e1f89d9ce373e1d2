"""python -m bench scale at a toy size: both processes run, their peak memory is each one's own,
and the distance it reports is the one between the two curves' files."""

import pytest

from bench.probe_scale import peak_run, scale_rows
from probe.results import read_results


def test_the_scale_row_compares_the_two_curves_it_ran(tmp_path):
    (row,) = scale_rows(tmp_path, dim=16, classes=12, train=30, val=10, per_class=3)
    s = row.settings
    assert s["fits"] == s["converged_fits"] == 3
    fits = read_results(tmp_path / "probe_scale16" / "fewshot.csv")
    ours = {int(r["n_per_class"]): float(r["test_acc"]) for r in fits}
    lines = (tmp_path / "scale16_npy" / "scale16" / "testing_seed00.csv").read_text().split()[1:]
    seed = {int(n) // 12: float(acc) for n, acc, _ in (line.split(",") for line in lines)}
    assert sorted(ours) == sorted(seed) == [1, 2, 3]
    assert s["seed_max_abs_acc_diff"] == round(max(abs(ours[n] - seed[n]) for n in ours), 4)
    # a ratio of rates (items / seconds): the time ratio up to the last bit of rounding
    assert row.ratio == pytest.approx(row.reference["median_s"] / row.ours["median_s"], rel=1e-12)


def test_peak_memory_is_the_childs_own():
    """A small child reports its own peak, not the parent's (which ru_maxrss would carry over)."""
    big = b"1" * (600 << 20)  # touched: the parent's resident set is over 600 MB
    _, peak = peak_run("json.tool", ["--help"])
    assert len(big) and 0.001 < peak < 0.2
