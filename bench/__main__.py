"""python -m bench [shard|decode|embed|probe|e2e|all] [--quick] [--device auto|cpu|cuda]

    python -m bench all --quick         # `make bench`: small inputs, a few minutes on a CPU
    python -m bench embed --device cuda # every encoder, full size, on the GPU

Each benchmark times ours and the reference path in the same run; rows are appended to
bench/results/<bench>.jsonl and REPORT.md is regenerated. A benchmark that cannot run here
is recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

from bench import stages
from bench.harness import RESULTS, append, machine
from bench.report import write_report

BENCHES = {"shard": stages.bench_shard, "decode": stages.bench_decode, "embed": stages.bench_embed,
           "probe": stages.bench_probe, "e2e": stages.bench_e2e}
log = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, record them, rewrite the report."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
    p.add_argument("--quick", action="store_true", help="small inputs (what `make bench` runs)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--results", type=Path, default=RESULTS, help="where the .jsonl rows go")
    p.add_argument("--work", type=Path, default=None, help="folder for generated inputs (default: temp)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device on this machine")
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          (a.device if a.device != "auto" else "cpu"))
    mach = machine()
    names = list(BENCHES) if a.which == "all" else [a.which]
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        ws = stages.Workspace(Path(tmp), stages.Sizes.pick(a.quick, device), device)
        for name in names:
            log.info("%s on %s ...", name, device)
            for row in BENCHES[name](ws):
                append(row, mach, a.results)
                msg = f"skipped ({row.skipped})" if row.skipped else f"{row.ratio:.2f}x the reference"
                log.info("%s %s [%s]: %s", row.bench, row.case, row.device, msg)
    log.info("report: %s", write_report(a.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
