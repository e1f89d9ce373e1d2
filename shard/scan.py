"""Find splits, classes and samples in an ImageFolder tree, in torchvision's order.

torchvision's `ImageFolder` sorts class folders, then walks each class folder
(`sorted(os.walk(...))`) and sorts file names. We keep that order so labels and
sample indices agree with the reference path, but we skip hidden files and
folders (`.DS_Store`, `._x.JPEG`, `.ipynb_checkpoints/`), which torchvision would
take for classes or images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# torchvision.datasets.folder.IMG_EXTENSIONS (a test keeps the two equal).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_SPLITS = ("train", "val")


class ScanError(ValueError):
    """The source tree cannot be turned into shards as it is."""


@dataclass(frozen=True)
class Candidate:
    """One image file of a split: path relative to the split folder, and its class index, or
    for a multi-label split its sorted class indices joined by commas ("3,17")."""

    path: str
    label: int | str


def _visible(name: str) -> bool:
    return not name.startswith(".")


def find_classes(split_dir: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `split_dir`."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))
    if not classes:
        raise ScanError(f"{split_dir}: no class folders found (expected {split_dir}/<class>/<image>)")
    return classes


def _walk_sorted(class_dir: Path) -> list[tuple[str, list[str]]]:
    """(root, file names) for every non-hidden folder under `class_dir`, sorted like torchvision."""
    walked = []
    for root, dirs, files in os.walk(class_dir, followlinks=True):
        dirs[:] = [d for d in dirs if _visible(d)]
        walked.append((root, files))
    return [(root, sorted(files)) for root, files in sorted(walked)]


def list_candidates(split_dir: Path, classes: list[str]) -> list[Candidate]:
    """Every visible file with an image extension, in ImageFolder order."""
    found = []
    for label, name in enumerate(classes):
        for root, files in _walk_sorted(split_dir / name):
            rel_root = os.path.relpath(root, split_dir)
            for fname in files:
                if _visible(fname) and fname.lower().endswith(IMG_EXTENSIONS):
                    found.append(Candidate(Path(rel_root, fname).as_posix(), label))
    return found


def resolve_splits(src: Path, split: str | None, splits: list[str] | None) -> dict[str, Path]:
    """Map split name -> folder: SRC itself with `--split`, else SRC/<name> for each split."""
    if not src.is_dir():
        raise ScanError(f"{src}: not a folder (expected an ImageFolder with train/ and/or val/)")
    if split is not None:
        return {split: src}
    names = splits or [s for s in DEFAULT_SPLITS if (src / s).is_dir()]
    if not names:
        raise ScanError(
            f"{src}: has no train/ or val/ folder; pass --split NAME if {src} is itself "
            "a class-folder tree, or --splits a,b to name its split folders"
        )
    missing = [s for s in names if not (src / s).is_dir()]
    if missing:
        raise ScanError(f"{src}: no folder for split(s) {', '.join(missing)}")
    return {s: src / s for s in names}


def check_same_classes(classes: dict[str, list[str]]) -> None:
    """All splits must share one class list, or their labels would mean different things."""
    (first, reference), *others = classes.items()
    for name, other in others:
        if other != reference:
            only_first = sorted(set(reference) - set(other))
            only_other = sorted(set(other) - set(reference))
            raise ScanError(
                f"splits {first} and {name} have different classes: "
                f"only in {first}: {_few(only_first)}; only in {name}: {_few(only_other)}"
            )


def _few(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_label_list(list_file: Path) -> tuple[list[str], list[Candidate]]:
    """A multi-label list (`path<TAB>label,label,...` per line; blank and # lines ignored):
    (sorted class names, candidates in the file's order)."""
    rows = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        path, tab, names = line.partition("\t")
        labels = [x.strip() for x in names.split(",") if x.strip()]
        if not tab or not path or not labels or "\t" in names:
            raise ScanError(f"{list_file}:{n}: expected 'path<TAB>label,label,...', got {line!r}")
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise ScanError(f"{list_file}:{n}: {path!r} must be relative to the split folder")
        rows.append((path, labels))
    if not rows:
        raise ScanError(f"{list_file}: no samples listed")
    classes = sorted({name for _, labels in rows for name in labels})
    index = {c: i for i, c in enumerate(classes)}
    return classes, [Candidate(p, ",".join(str(i) for i in sorted({index[x] for x in labels})))
                     for p, labels in rows]
