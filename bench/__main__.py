"""python -m bench [shard|decode|embed|probe|active|e2e|remote|all|tolerance|gpu] [--quick] [--device D]

    python -m bench all --quick         # `make bench`: small inputs, a few minutes on a CPU
    python -m bench embed --device cuda # every encoder, full size, on the GPU
    python -m bench tolerance           # what the probes' default tol costs (bench.tolerance)
    python -m bench scale               # the probe at ImageNet's size against the seed script
    python -m bench scale --backends numpy,torch,sklearn --dim 1024   # ... each backend, D=1024
    python -m bench remote              # shards on S3 against local ones (MSNPIPE_BENCH_S3, else moto)
    python -m bench gpu                 # the GPU figures (bench/gpu.py); --quick: fewer, smaller
    python -m bench gpu --scale 50000   # ... with N ImageNet-like JPEGs in the decode and embed sections

Each benchmark times ours and the reference path in the same run; rows are appended to
bench/results/<bench>.jsonl and REPORT.md is regenerated. A benchmark that cannot run here
is recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

BENCHES = ("shard", "decode", "embed", "probe", "active", "e2e", "remote", "tolerance", "scale")
ALL = BENCHES[:7]  # what `all` runs
log = logging.getLogger("bench")


def _record(rows, mach: dict, results: Path, *, keep: bool = True) -> None:
    from bench.harness import append

    for row in rows:
        if keep:
            append(row, mach, results)
        msg = (f"skipped ({row.skipped})" if row.skipped else f"{row.ratio:.2f}x the reference" if row.ratio
               else f"{row.ours['rate']:.1f} {row.ours['unit']}" if row.ours else str(row.settings))
        log.info("%s %s [%s]: %s", row.bench, row.case, row.device, msg)


def run_gpu(a: argparse.Namespace, mach: dict, tmp: Path) -> None:
    """The GPU figures; without CUDA, a dry run on the CPU and skipped rows."""
    import torch

    from bench import gpu

    if torch.cuda.is_available() and a.device != "cpu":
        sizes = gpu.QUICK if a.quick else gpu.FULL
        if a.scale:
            sizes = sizes.scaled(a.scale)
        if a.budget:
            sizes = dataclasses.replace(sizes, seconds=a.budget)
        if a.encoders:
            sizes = dataclasses.replace(sizes, encoders=tuple(a.encoders.split(",")))
        only = tuple(s for s in a.sections.split(",") if s)
        _record(gpu.rows(tmp, torch.device("cuda"), sizes, only=only), mach, a.results)
        return
    log.info("no CUDA device: every section once at toy sizes on the CPU (not recorded)")
    _record(gpu.rows(tmp, torch.device("cpu"), gpu.DRY), mach, a.results, keep=False)
    _record(gpu.skipped_rows("no CUDA device on this machine"), mach, a.results)


def _scale_options(backends: str | None, dim: int | None) -> dict:
    """bench_scale's keyword arguments from --backends and --dim; UserError naming a bad value."""
    from msnpipe.runtime import UserError
    from probe.backends import BACKENDS

    out: dict = {}
    if backends is not None:
        names = tuple(b.strip() for b in backends.split(",") if b.strip())
        if not names or set(names) - set(BACKENDS) or len(set(names)) < len(names):
            raise UserError(f"--backends {backends!r}: give distinct names from "
                            f"{', '.join(BACKENDS)}, comma-separated")
        out["backends"] = names
    if dim is not None:
        if dim < 1:
            raise UserError(f"--dim {dim}: give a positive embedding width")
        out["dim"] = dim
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, record them, rewrite the report."""
    from msnpipe.runtime import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all", "gpu"])
    p.add_argument("--quick", action="store_true", help="small inputs (what `make bench` runs)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--results", type=Path, default=None, help="where the .jsonl rows go (bench/results)")
    p.add_argument("--work", type=Path, default=None, help="folder for generated inputs (default: temp)")
    p.add_argument("--budget", type=float, default=None,
                   help="gpu: seconds for the whole run, data generation included (default 360, --quick 240)")
    p.add_argument("--scale", type=int, default=0, metavar="N",
                   help="gpu: N ImageNet-like JPEGs for the decode and embed sections (default 20,000; "
                        "--quick 3,000)")
    p.add_argument("--sections", default="", help="gpu: only these sections (gpu-model,gpu-embed,...)")
    p.add_argument("--encoders", default="", help="gpu: only these encoders in gpu-model")
    p.add_argument("--backends", default=None,
                   help="scale: probe backends to run, the first one's curve the optimum (default numpy)")
    p.add_argument("--dim", type=int, default=None, help="scale: embedding width (default 384)")
    a = p.parse_args(argv)

    from bench import stages
    from bench.harness import RESULTS, machine
    from bench.report import write_report
    from msnpipe.files import writable_dir
    from msnpipe.runtime import UserError, pick_device

    a.results = a.results or RESULTS
    scale = {}
    try:
        if (a.backends is not None or a.dim is not None) and a.which != "scale":
            raise UserError(f"--backends and --dim are options of `python -m bench scale`, not of {a.which}")
        scale = _scale_options(a.backends, a.dim)
        device = pick_device(a.device)
        a.work = a.work and writable_dir(a.work, "--work")
    except UserError as e:
        p.error(str(e))
    mach = machine()
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        if a.which == "gpu":
            run_gpu(a, mach, Path(tmp))
        else:
            ws = stages.Workspace(Path(tmp), stages.Sizes.pick(a.quick, device), device)
            for name in ALL if a.which == "all" else (a.which,):
                log.info("%s on %s ...", name, device)
                options = scale if name == "scale" else {}
                _record(getattr(stages, f"bench_{name}")(ws, **options), mach, a.results)
    log.info("report: %s", write_report(a.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
