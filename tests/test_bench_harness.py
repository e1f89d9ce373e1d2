"""bench.harness: timings (warm-up, repeats, median), ratios, rows written and read back, the
machine description; bench.report's tables from them."""

import json

import pytest

from bench.harness import Row, Timing, append, load_rows, machine, measure
from bench.report import latest, write_report


def test_measure_warms_up_then_times_each_repeat(monkeypatch):
    import types
    calls, clock = [], iter([0.0, 1.0, 10.0, 12.0, 20.0, 21.5, 30.0, 34.0, 40.0, 41.0])
    monkeypatch.setattr("bench.harness.time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    t = measure(lambda: calls.append(1) or 50, repeats=3, warmup=1)
    assert len(calls) == 4  # one warm-up, three timed
    assert t.seconds == [2.0, 1.5, 4.0] and t.items == 50  # the warm-up's 1.0 s is not kept
    assert t.rate == pytest.approx(50 / 2.0)  # the median repeat
    s = t.summary()
    assert (s["median_s"], s["min_s"], s["max_s"], s["unit"]) == (2.0, 1.5, 4.0, "img/s")


def test_after_runs_after_each_call_outside_the_timed_region(monkeypatch):
    import types
    now, events = [0.0], []

    def tick() -> float:
        return now[0]

    def work() -> int:
        events.append("work")
        now[0] += 1.0
        return 1

    def clean() -> None:  # slow clean-up that must not be counted
        events.append("after")
        now[0] += 100.0

    monkeypatch.setattr("bench.harness.time", types.SimpleNamespace(perf_counter=tick))
    t = measure(work, repeats=2, warmup=1, after=clean)
    assert events == ["work", "after"] * 3 and t.seconds == [1.0, 1.0]


def test_ratio_is_ours_over_the_reference():
    ours, ref = Timing([2.0], 100).summary(), Timing([8.0], 100).summary()
    assert Row("b", "c", "cpu", ours, ref).ratio == pytest.approx(4.0)
    assert Row("b", "c", "cpu", skipped="no GPU").ratio is None
    assert Row("b", "c", "cpu", ours, None).ratio is None


def test_rows_round_trip_and_the_report_keeps_the_newest(tmp_path):
    mach = machine()
    assert {"cpu", "cores", "gpu", "commit", "versions"} <= set(mach) and mach["versions"]["torch"]
    first = append(Row("probe", "small", "cpu", Timing([1.0], 10).summary(), Timing([3.0], 10).summary(),
                       "ours", "ref"), mach, tmp_path)
    append(Row("probe", "small", "cpu", Timing([1.0], 10).summary(), Timing([2.0], 10).summary(),
               "ours", "ref"), mach, tmp_path)
    append(Row("probe", "cuML", "cuda", skipped="not installed"), mach, tmp_path)
    rows = load_rows(tmp_path)
    assert [r["ratio"] for r in rows] == [3.0, 2.0, None] and rows[0] == json.loads(json.dumps(first))
    newest = latest(rows)
    assert sorted((r["case"], r["ratio"]) for r in newest) == [("cuML", None), ("small", 2.0)]
    report = write_report(tmp_path).read_text()
    assert "| small | cpu | ours:" in report and "**2.00**" in report and "**3.00**" not in report
    assert "skipped: not installed" in report and (tmp_path / "ratios.png").exists()


def test_a_skipped_row_never_hides_a_measured_one(tmp_path):
    # a later run that ran out of time budget must not wipe an earlier figure off the report
    mach = machine()
    append(Row("gpu-probe", "tol 1e-8", "cuda", Timing([2.0], 12).summary()), mach, tmp_path)
    append(Row("gpu-probe", "tol 1e-8", "cuda", skipped="time budget"), mach, tmp_path)
    append(Row("gpu-probe", "cuML", "cuda", skipped="not installed"), mach, tmp_path)
    append(Row("gpu-probe", "cuML", "cuda", skipped="still not installed"), mach, tmp_path)
    newest = {r["case"]: r for r in latest(load_rows(tmp_path))}
    assert newest["tol 1e-8"]["ours"]["median_s"] == 2.0 and not newest["tol 1e-8"]["skipped"]
    assert newest["cuML"]["skipped"] == "still not installed"


def test_work_folder_is_made_when_missing_and_a_file_is_refused(tmp_path, monkeypatch, capsys):
    from bench import stages
    from bench.__main__ import main
    roots = []
    monkeypatch.setattr(stages, "bench_shard", lambda ws: roots.append(ws.root) or [])
    work = tmp_path / "not" / "yet"
    assert main(["shard", "--work", str(work), "--results", str(tmp_path / "r")]) == 0
    assert roots[0].parent == work
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:
        main(["shard", "--work", str(tmp_path / "file"), "--results", str(tmp_path / "r")])
    assert e.value.code == 2 and "is a file, expected a folder" in capsys.readouterr().err
