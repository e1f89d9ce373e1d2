"""Timing, machine description, result rows and the report.

Each benchmark times our path and the reference path in the same run, on the same
inputs: set-up outside the timed region, warm-up, then the median (min, max) of N
repeats. A row is appended to bench/results/<bench>.jsonl with the machine, versions,
settings and git commit; REPORT.md and the plots are regenerated from every row.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parents[1]


@dataclass(frozen=True)
class Timing:
    """Seconds per repeat and the work done in one repeat."""

    seconds: list[float]
    items: int
    unit: str = "img/s"

    @property
    def rate(self) -> float:
        """Median items per second."""
        return self.items / statistics.median(self.seconds)

    def summary(self) -> dict:
        med = statistics.median(self.seconds)
        return {"items": self.items, "unit": self.unit, "median_s": med, "min_s": min(self.seconds),
                "max_s": max(self.seconds), "rate": self.items / med}


def measure(fn: Callable[[], int], repeats: int = 3, warmup: int = 1, *, sync: bool = False,
            unit: str = "img/s", after: Callable[[], None] | None = None) -> Timing:
    """Time `fn` (which returns how many items it processed) `repeats` times after warm-up;
    `after` runs after each call, outside the timed region (e.g. to remove its output)."""
    def once() -> tuple[float, int]:
        if sync:
            _cuda_sync()
        t = time.perf_counter()
        n = fn()
        if sync:
            _cuda_sync()
        seconds = time.perf_counter() - t
        if after is not None:
            after()
        return seconds, n

    for _ in range(warmup):
        once()
    runs = [once() for _ in range(repeats)]
    return Timing([s for s, _ in runs], runs[0][1], unit)


def _cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model, cores, memory, GPU and driver, versions, git commit."""
    import torch

    gpu = driver = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            driver = "unknown"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    git = ["git", "rev-parse", "--short", "HEAD"]  # MSNPIPE_COMMIT: for a copy of the tree without .git
    commit = os.environ.get("MSNPIPE_COMMIT") or subprocess.run(
        git, cwd=ROOT, capture_output=True, text=True).stdout.strip() or "unknown"
    return {"cpu": _cpu_model(), "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem, 1),
            "gpu": gpu, "driver": driver, "commit": commit, "versions": _versions()}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "nvidia-dali-cuda130", "timm", "zarr", "numpy",
                 "scikit-learn", "webdataset", "pillow", "cuml-cu13"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class Row:
    """One measurement: ours against the reference, or a benchmark skipped with its reason."""

    bench: str
    case: str
    device: str
    ours: dict | None = None
    reference: dict | None = None
    ours_label: str = ""
    reference_label: str = ""
    settings: dict = field(default_factory=dict)
    skipped: str | None = None

    @property
    def ratio(self) -> float | None:
        """How many times faster ours is (throughput ratio, or inverse time ratio)."""
        if not self.ours or not self.reference:
            return None
        return self.ours["rate"] / self.reference["rate"]


def append(row: Row, mach: dict, results: Path = RESULTS) -> dict:
    """Add one row (with machine and time) to results/<bench>.jsonl; return what was written."""
    results.mkdir(parents=True, exist_ok=True)
    record = asdict(row) | {"ratio": row.ratio, "machine": mach,
                            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    with open(results / f"{row.bench}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def load_rows(results: Path = RESULTS) -> list[dict]:
    """Every row of every results/*.jsonl, oldest first."""
    rows = []
    for path in sorted(results.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["time"])
