"""The few-shot probe at ImageNet's size against the seed script: `python -m bench scale`.

    python -m bench scale            # 1000 classes, 1,281,000 x 384 train rows, 50,000 val rows
    python -m bench scale --backends numpy,torch,sklearn --dim 1024
    rows = scale_rows(root, dim=384, classes=1000, train=1281, val=50, backends=("numpy", "torch"))

One seed (seed 0, 1-10 labels a class, C=1) of the seed's evaluate_embeddings.py
(bench.reference_probe, a process) and of `python -m probe --backend B` for each backend
(a process each), on the same rows drawn by bench.synthetic.realistic_embeddings (seed 0):
wall time, peak resident memory, and how far each backend's answers and the seed's lie from
the first backend's, whose fits are certified at the optimum (probe.precondition).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.common import curve_answers, npy_store
from bench.harness import ROOT, Row, Timing

# runs a module as `python -m` does and prints its peak resident set (VmHWM, KiB: reset at exec,
# unlike ru_maxrss, which carries the forking parent's) as the last line
_PEAK = ("import runpy, sys\n"
         "sys.argv = sys.argv[1:]\n"
         "try:\n"
         "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
         "except SystemExit as e:\n"
         "    if e.code:\n"
         "        raise\n"
         "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
         "print(hwm.split()[1], file=sys.stderr)\n")


def peak_run(module: str, args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident GB) of `python -m module args` in its own process."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK, module, *args], cwd=ROOT, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t
    if done.returncode:
        raise RuntimeError(f"python -m {module} failed:\n{done.stderr[-2000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 2**20


def _seed_answers(folder: Path, encoder: str, classes: int) -> dict:
    """(0, n per class) -> (accuracy, log-likelihood) of the seed script's testing_seed00.csv."""
    lines = (folder / encoder / "testing_seed00.csv").read_text().split()[1:]
    return {(0, int(n) // classes): (float(acc), float(ll)) for n, acc, ll in (s.split(",") for s in lines)}


def scale_rows(root: Path, *, dim: int = 384, classes: int = 1000, train: int = 1281, val: int = 50,
               per_class: int = 10, backends: tuple[str, ...] = ("numpy",), device: str = "cpu") -> list[Row]:
    """The seed script and `python -m probe` (once per backend) on one seed of a store of
    classes x train rows: a row per backend, each against the one seed-script run. The first
    backend's certified curve is the optimum the others and the seed are measured from."""
    from bench.synthetic import realistic_embeddings
    from probe.results import read_results

    encoder = f"scale{dim}"
    store = npy_store(root, encoder, realistic_embeddings(classes, dim, {"train": train, "val": val}, seed=0))
    folder = root / f"{encoder}_npy"
    ref_s, ref_gb = peak_run("bench.reference_probe", [str(folder), "--encoder", encoder, "--seed", "0",
                                                       "--n-per-class", str(per_class)])
    seed = _seed_answers(folder, encoder, classes)
    rows, optimum = [], None
    for backend in backends:
        out = root / f"probe_{encoder}_{backend}"
        ours_s, ours_gb = peak_run("probe", [str(store), "--encoder", encoder, "--out", str(out),
                                             "--seeds", "0", "--per-class", f"1-{per_class}",
                                             "--backend", backend, "--device", device])
        ours = {(int(s), int(n)): v for (s, n), v in curve_answers(out).items()}
        optimum = optimum or ours
        fits, keys = read_results(out / "fewshot.csv"), sorted(ours)
        settings = {
            "backend": backend, "classes": classes, "dim": dim, "train": classes * train,
            "test": classes * val, "seeds": 1, "n_per_class": f"1-{per_class}",
            "data": "realistic_embeddings seed 0",
            "peak_rss_gb": round(ours_gb, 2), "reference_peak_rss_gb": round(ref_gb, 2),
            "converged_fits": sum(int(r["converged"]) for r in fits), "fits": len(fits),
            # this backend's and the seed's distances from the optimum (the first backend's curve)
            "optimum": backends[0],
            "max_abs_acc_diff": round(max(abs(ours[k][0] - optimum[k][0]) for k in keys), 4),
            "max_abs_loglik_diff": round(max(abs(ours[k][1] - optimum[k][1]) for k in keys), 4),
            "seed_max_abs_acc_diff": round(max(abs(seed[k][0] - optimum[k][0]) for k in keys), 4),
            "seed_max_abs_loglik_diff": round(max(abs(seed[k][1] - optimum[k][1]) for k in keys), 4),
            "acc_by_n": {k[1]: [round(ours[k][0], 4), seed[k][0]] for k in keys},  # [ours, the seed's]
            "median_iterations": sorted(v[2] for v in ours.values())[len(ours) // 2]}
        case = f"{classes} classes, D={dim}, {classes * train:,} train rows, one seed"
        rows.append(Row("probe-scale", case, device if backend == "torch" else "cpu",
                        Timing([ours_s], len(keys), "fits/s").summary(),
                        Timing([ref_s], len(keys), "fits/s").summary(),
                        f"python -m probe --backend {backend} (converged; a process)",
                        "evaluate_embeddings.py (a process)", settings))
    return rows
