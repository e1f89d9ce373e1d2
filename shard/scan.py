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

from msnpipe.files import plain_name
from msnpipe.runtime import UserError, difference, few

# torchvision.datasets.folder.IMG_EXTENSIONS (a test keeps the two equal).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_SPLITS = ("train", "val")


class ScanError(UserError):
    """The source tree cannot be turned into shards as it is."""


@dataclass(frozen=True)
class Candidate:
    """One image file of a split: path relative to the split folder, and its class index, or
    for a multi-label split its sorted class indices joined by commas ("3,17"). `skip` is a
    reason known before the file is opened (a folder seen twice through a symlink)."""

    path: str
    label: int | str
    skip: str = ""


def _visible(name: str) -> bool:
    return not name.startswith(".")


def find_classes(split_dir: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `split_dir`."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))
    if not classes:
        raise ScanError(f"{split_dir}: no class folders found (expected {split_dir}/<class>/<image>)")
    return classes


def _folder_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_sorted(class_dir: Path, seen: dict[tuple[int, int], str]) -> tuple[list, list]:
    """(root, sorted file names) for every non-hidden folder under `class_dir`, sorted like
    torchvision, each folder once: `seen` maps (device, inode) to the first path it was met
    at; a folder met again (a symlink loop, or a second link to it) is returned in the second
    list as (path, first path) and not entered."""
    walked, again = [], []
    for root, dirs, files in os.walk(class_dir, followlinks=True):
        keep = []
        for d in sorted(x for x in dirs if _visible(x)):
            ident = _folder_id(os.path.join(root, d))
            if ident in seen:
                again.append((os.path.join(root, d), seen[ident]))
            else:
                if ident is not None:
                    seen[ident] = os.path.join(root, d)
                keep.append(d)
        dirs[:] = keep
        walked.append((root, files))
    return [(root, sorted(files)) for root, files in sorted(walked)], again


def _again_reason(path: str, first: str, split_dir: Path) -> str:
    target, here = os.path.realpath(path), os.path.realpath(os.path.dirname(path))
    first_rel = os.path.relpath(first, split_dir)
    if here == target or here.startswith(target + os.sep):
        return f"symlink loop: leads back to {first_rel}, already listed"
    return f"folder listed already as {first_rel} (a second link to it)"


def list_candidates(split_dir: Path, classes: list[str]) -> list[Candidate]:
    """Every visible file with an image extension, in ImageFolder order; a folder reached
    twice (symlink loop) is listed once, as a candidate to skip with the reason."""
    found = []
    tops = [str(split_dir)] + [str(split_dir / name) for name in classes]
    seen = {i: top for top in reversed(tops) if (i := _folder_id(top)) is not None}
    for label, name in enumerate(classes):
        walked, again = _walk_sorted(split_dir / name, seen)
        for root, files in walked:
            rel_root = os.path.relpath(root, split_dir)
            for fname in files:
                if _visible(fname) and fname.lower().endswith(IMG_EXTENSIONS):
                    found.append(Candidate(os.path.join(rel_root, fname), label))  # no Path: cheaper
        found += [Candidate(Path(os.path.relpath(p, split_dir)).as_posix(), label,
                            _again_reason(p, first, split_dir)) for p, first in again]
    return found


def resolve_splits(src: Path, split: str | None, splits: list[str] | None) -> dict[str, Path]:
    """Map split name -> folder: SRC itself with `--split`, else SRC/<name> for each split. A
    split name becomes OUT/<name>, so it must be a plain name."""
    for name in [split] if split is not None else splits or []:
        plain_name(name, "--split" if split is not None else "--splits")
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
            raise ScanError(f"splits {first} and {name} have different classes: "
                            f"{difference(first, reference, name, b=other)}")


def check_subset(name: str, classes: list[str], source: str, *, reference: list[str]) -> None:
    """A split given another split's class list (--classes-from) may lack classes, not add any."""
    extra = sorted(set(classes) - set(reference))
    if extra:
        raise ScanError(f"{name} has classes that {source} lacks: {few(extra)}; "
                        f"its labels cannot be numbered by {source}'s class list")


def read_label_list(list_file: Path, classes: list[str] | None = None
                    ) -> tuple[list[str], list[Candidate]]:
    """A multi-label list (`path<TAB>label,label,...` per line; blank and # lines ignored):
    (class names, candidates in the file's order). Classes are the sorted label names, or
    `classes` when given (every label must be one of them)."""
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
    named = sorted({name for _, labels in rows for name in labels})
    if classes is not None:
        check_subset(str(list_file), named, "the given class list", reference=classes)
    classes = named if classes is None else classes
    index = {c: i for i, c in enumerate(classes)}
    return classes, [Candidate(p, ",".join(str(i) for i in sorted({index[x] for x in labels})))
                     for p, labels in rows]
