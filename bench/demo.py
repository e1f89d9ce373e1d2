"""python -m bench.demo --out out/demo: the whole pipeline on a generated image set, on the CPU.

    make demo                                  # the same, setting up .venv first if needed
    python -m bench.demo --out out/demo --classes 4 --train 6 --val 3   # smaller
    python -m bench.demo --out out/demo --data s3://bucket/demo         # shards and store in a bucket

Runs the README's commands one after another: a labelled ImageFolder of ImageNet-like JPEGs
(with a few broken files, so the shard report has something to say) -> shards -> a
random-weight ViT-S/16 saved in the official MSN checkpoint layout -> embeddings of train
and val (val with two augmented views) -> few-shot curve, kNN, table, plot, active-acquisition
curves (probe.active) and diagnostics.
The weights are random: the curve shows the pipeline working, not MSN's quality; `make weights`
downloads the real checkpoints.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.synthetic import make_image_folder
from msnpipe.remote import local_only

ROOT = Path(__file__).parents[1]
ENCODER = "vits16_800ep"


def step(title: str, *args: str) -> None:
    """Print and run one `python -m ...` command; stop the demo if it fails."""
    cmd = [sys.executable, "-m", *args]
    print(f"\n== {title}\n$ python -m {shlex.join(args)}", flush=True)
    t = time.perf_counter()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise SystemExit(f"demo: step failed: {title}")
    print(f"({time.perf_counter() - t:.1f} s)", flush=True)


def run_demo(out: Path, classes: int, train: int, *, val: int, seeds: int, per_class: int,
             data: Path | str | None = None) -> dict[str, Path | str]:
    """Every stage in order; return where the results are. `data` (a folder or a URL; default
    `out`) holds the shards and the store."""
    from msnpipe import remote

    data = data if data is not None else out
    def join(name: str) -> Path | str:
        return remote.join(str(data), name) if remote.is_url(data) else Path(data) / name

    images, shards, store, probe = out / "images", join("shards"), join("embeddings.zarr"), out / "probe"
    active = out / "active"
    weights = out / "weights" / f"{ENCODER}.pth.tar"
    if not (images / "val").exists():
        print(f"== generating {classes} classes x ({train} train + {val} val) 500x375 JPEGs in {images}")
        make_image_folder(images, classes, train, val=val, broken=2)
    if not weights.exists():
        from embed.checkpoint import save_random_checkpoint
        from embed.encoders import get_spec

        save_random_checkpoint(weights, get_spec(ENCODER))
        print(f"== RANDOM weights saved in the official MSN layout: {weights}\n"
              f"   (for real ones: make weights ENCODER={ENCODER}, then --weights weights/)")
    step("shard: ImageFolder -> validated shards (broken files are skipped and listed)",
         "shard", str(images), str(shards), "--samples-per-shard", "64")
    step("verify the shards", "shard.verify", str(shards))
    step(f"embed train with {ENCODER} (random weights)", "embed", str(shards), "--split", "train",
         "--encoder", ENCODER, "--weights", str(weights), "--out", str(store), "--check-drift", "8")
    step(f"embed val with {ENCODER}, plus 2 augmented views per image", "embed", str(shards),
         "--split", "val", "--encoder", ENCODER, "--weights", str(weights), "--out", str(store),
         "--check-drift", "8", "--views", "2", "--augment", "msn")
    step("what the store holds", "embed.info", str(store))
    step("few-shot curve", "probe", str(store), "--encoder", ENCODER, "--per-class", f"1-{per_class}",
         "--seeds", f"0-{seeds - 1}", "--out", str(probe))
    ks = ",".join(str(k) for k in (5, 10, 20) if k <= classes * train) or str(classes * train)
    step("kNN", "probe.knn", str(store), "--encoder", ENCODER, "--k", ks, "--out", str(probe))
    step("plot", "probe.plot", str(probe), "--out", str(probe / "fewshot.png"))
    step("table", "probe.table", str(probe))
    step("which labels to buy next: active acquisition, 3 rounds of a label per class",
         "probe.active", str(store), "--encoder", ENCODER, "--out", str(active), "--strategies",
         "balanced,random,entropy,typiclust", "--init", "1", "--rounds", "3",
         "--seeds", f"0-{min(seeds, 2) - 1}")
    step("active-acquisition plot", "probe.plot", str(active), "--out", str(active / "active.png"))
    step("diagnostics", "probe.diagnose", str(store), "--encoder", ENCODER, "--out", str(out / "diagnose"),
         "--tsne-classes", str(classes), "--tsne-per-class", str(val))
    return {"store": store, "csv": probe / "fewshot.csv", "plot": probe / "fewshot.png",
            "diagnose": out / "diagnose" / "diagnostics.md", "active": active / "active.png"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=local_only, default=Path("out/demo"))
    p.add_argument("--data", default=None,
                   help="where the shards and the store go: a folder or a URL (default: --out)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=24, help="train images per class")
    p.add_argument("--val", type=int, default=8, help="val images per class")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--per-class", type=int, default=10, help="label counts 1..N per class")
    a = p.parse_args(argv)
    if a.per_class > a.train:
        p.error("--per-class cannot exceed --train")
    t = time.perf_counter()
    where = run_demo(a.out, a.classes, a.train, val=a.val, seeds=a.seeds, per_class=a.per_class, data=a.data)
    print(f"\n== demo finished in {time.perf_counter() - t:.0f} s (weights were RANDOM: "
          f"`make weights` fetches the real MSN checkpoints)")
    for name, path in where.items():
        print(f"   {name:6s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
