"""What the probes' default tol costs: each backend's answers at a tolerance against a converged
solve (torch, float64, tol 1e-8), on a subset of a curve; rows for `python -m bench tolerance`
(bench.stages) and gpu-probe (bench.gpu_probe).

    rows = tolerance_rows(ctx, store, (4, 3), settings={...}, bench="probe-tol")
"""

from __future__ import annotations

from pathlib import Path

from bench.common import CORES, Context, curve_answers, distance, timed_probe
from bench.harness import Row


def tolerance_rows(ctx: Context, store: Path, sub: tuple[int, int], *, settings: dict,
                   bench: str = "gpu-probe") -> list[Row]:
    """How far each backend's answers at a tolerance lie from a converged solve (torch,
    float64, tol 1e-8), on the subset: what the default tol costs, and what float32 reaches."""
    dev = str(ctx.device)
    configs = [("torch, float64, tol 1e-8 (the converged solve)", "torch", "1e-8", "float64"),
               ("torch, float32, tol 1e-4 (default)", "torch", "1e-4", "float32"),
               ("torch, float64, tol 1e-4", "torch", "1e-4", "float64"),
               ("torch, float32, tol 1e-6", "torch", "1e-6", "float32"),
               ("scikit-learn, tol 1e-4 (default)", "sklearn", "1e-4", None),
               ("scikit-learn, tol 1e-6", "sklearn", "1e-6", None),
               ("numpy, tol 1e-4 (default)", "numpy", "1e-4", None),
               ("numpy, tol 1e-6", "numpy", "1e-6", None)]
    rows, converged = [], None
    for what, backend, tol, dtype in configs:
        case = f"{what}, {sub[0]} seeds x n=1..{sub[1]}"  # the same name measured or skipped
        if ctx.budget.left() < 15:
            rows.append(Row(bench, case, ctx.device.type, skipped="time budget"))
            continue
        out = ctx.root / ("p_sk" if (backend, tol) == ("sklearn", "1e-4") else f"p_tol_{len(rows)}")
        extra = ["--tol", tol, "--max-iter", "5000"] + (
            ["--device", dev, "--solver-dtype", dtype] if backend == "torch" else ["--jobs", str(CORES)])
        if (out / "fewshot.csv").exists():  # measured above: its answers, no second run
            timing = None
        else:
            timing = timed_probe(store, out, backend, seeds=sub[0], per_class=sub[1], extra=tuple(extra))
        answers = curve_answers(out)
        converged = converged or answers
        where = ctx.device.type if backend == "torch" else "cpu"
        rows.append(Row(bench, case, where, timing.summary() if timing else None, None,
                        f"--backend {backend} --tol {tol}", "", settings | distance(answers, converged)))
    return rows
