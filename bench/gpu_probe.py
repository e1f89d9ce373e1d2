"""The GPU benchmark's embedding sections (bench.gpu runs them): gpu-probe (few-shot fits on the
GPU against scikit-learn and cuML, and what each tol costs) and gpu-knn (kNN and diagnostics).

    rows = probe_rows(Context(root, torch.device("cuda"), FULL, Budget(60)))
"""

from __future__ import annotations

import torch

from bench.common import CORES, Context, agreement, curve_answers, installed, npy_store, timed_probe
from bench.harness import Row, measure
from bench.tolerance import tolerance_rows


def probe_rows(ctx: Context) -> list[Row]:
    from bench.synthetic import realistic_embeddings

    classes, dim, tr, te = ctx.sizes.probe
    store = npy_store(ctx.root, "real", realistic_embeddings(classes, dim, {"train": tr, "val": te}, seed=0))
    s, dev = ctx.sizes, str(ctx.device)
    sub = (s.sk_seeds, s.sk_per_class)
    settings = {"classes": classes, "dim": dim, "train": classes * tr, "test": classes * te,
                "data": "bench.synthetic.realistic_embeddings (power-law spectrum, overlapping classes)"}
    rows = []
    curve = timed_probe(store, ctx.root / "p_curve", "torch", seeds=s.seeds, per_class=s.per_class,
                         extra=("--device", dev))
    rows.append(Row("gpu-probe", f"torch, {s.seeds} seeds x n=1..{s.per_class}", ctx.device.type,
                    curve.summary(), None, f"--backend torch on {dev}", "", settings))
    torch_sub = timed_probe(store, ctx.root / "p_torch", "torch", seeds=sub[0], per_class=sub[1],
                             extra=("--device", dev))
    if not installed("sklearn"):
        return rows + [Row("gpu-probe", "scikit-learn", "cpu", skipped="not installed (scikit-learn)")]
    sk = timed_probe(store, ctx.root / "p_sk", "sklearn", seeds=sub[0], per_class=sub[1],
                      extra=("--jobs", str(CORES)))
    agree = agreement(curve_answers(ctx.root / "p_sk"), curve_answers(ctx.root / "p_torch"))
    rows.append(Row("gpu-probe", f"torch vs scikit-learn, {sub[0]} seeds x n=1..{sub[1]}", ctx.device.type,
                    torch_sub.summary(), sk.summary(), f"--backend torch on {dev}",
                    f"--backend sklearn, {CORES} processes x 1 BLAS thread", settings | agree))
    rows += tolerance_rows(ctx, store, sub, settings=settings)
    if installed("cuml"):
        cu = timed_probe(store, ctx.root / "p_cuml", "cuml", seeds=sub[0], per_class=sub[1])
        rows.append(Row("gpu-probe", f"torch vs cuML, {sub[0]} seeds x n=1..{sub[1]}", ctx.device.type,
                        torch_sub.summary(), cu.summary(), f"--backend torch on {dev}", "--backend cuml",
                        settings | agreement(curve_answers(ctx.root / "p_cuml"),
                                             curve_answers(ctx.root / "p_torch"))))
    else:
        rows.append(Row("gpu-probe", "cuML", "cuda", skipped="not installed (cuml)"))
    return rows


def knn_rows(ctx: Context) -> list[Row]:
    from bench.synthetic import realistic_embeddings
    from embed.store import open_embeddings
    from probe.diagnose import main as diagnose_main
    from probe.knn import evaluate

    n_train, n_test, dim = ctx.sizes.knn
    per_class = {"train": max(1, n_train // 1000), "val": max(1, n_test // 1000)}
    data = realistic_embeddings(1000, dim, per_class, seed=1)
    store = npy_store(ctx.root, "big", data)
    train, test = open_embeddings(store, "big", "train"), open_embeddings(store, "big", "val")
    cpu = torch.device("cpu")
    ks = (10, 20, 100, 200) if not ctx.dry else (5,)
    run = lambda d: (evaluate(train, test, ks, temperature=0.07, device=d), test.shape[0])[1]  # noqa: E731
    settings = {"train": train.shape, "test": test.shape, "k": ks}
    ours = measure(lambda: run(ctx.device), ctx.sizes.repeats, sync=not ctx.dry, unit="queries/s")
    reference = measure(lambda: run(cpu), 1, warmup=0, unit="queries/s")
    rows = [Row("gpu-knn", "kNN", ctx.device.type, ours.summary(), reference.summary(),
                f"probe.knn on {ctx.device}", f"probe.knn on the CPU ({CORES} cores)", settings)]
    rows_cap = 10_000 if not ctx.dry else 200
    args = ["--max-rows", str(rows_cap), "--tsne-classes", "4", "--tsne-per-class", "5"]
    diag = lambda d, out: (diagnose_main([str(store), "--encoder", "big", "--device", str(d),  # noqa: E731
                                          "--out", str(ctx.root / out), *args]), 1)[1]
    ours = measure(lambda: diag(ctx.device, "diag_gpu"), 1, warmup=0, sync=not ctx.dry, unit="runs/s")
    reference = measure(lambda: diag(cpu, "diag_cpu"), 1, warmup=0, unit="runs/s")
    rows.append(Row("gpu-knn", "diagnose", ctx.device.type, ours.summary(), reference.summary(),
                    f"probe.diagnose on {ctx.device}", f"probe.diagnose on the CPU ({CORES} cores)",
                    settings | {"max_rows": rows_cap}))
    return rows
