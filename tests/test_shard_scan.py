"""shard.scan: classes, ImageFolder order, hidden files, split resolution."""

from pathlib import Path

import pytest
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS as TV_EXTENSIONS

from shard.scan import (
    IMG_EXTENSIONS,
    ScanError,
    check_same_classes,
    find_classes,
    list_candidates,
    resolve_splits,
)
from tests.conftest import jpeg_bytes, make_folder, write


def test_extensions_match_torchvision():
    assert IMG_EXTENSIONS == TV_EXTENSIONS


def test_order_matches_torchvision_imagefolder(tmp_path):
    root = make_folder(tmp_path, ["n02", "n01", "b b", "é"], per_class=3)
    for rel in ("n01/z.v1.JPEG", "n01/sub/a.JPEG", "n01/A.jpeg", "n01/sub2/x/y.png", "é/ü.JPG"):
        write(root / rel, jpeg_bytes())
    tv = ImageFolder(root)
    classes = find_classes(root)
    cands = list_candidates(root, classes)
    assert classes == tv.classes
    assert [(str(root / c.path), c.label) for c in cands] == tv.samples


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_folder(tmp_path, ["a", "b"], per_class=2)
    write(root / ".ipynb_checkpoints" / "x.JPEG", jpeg_bytes())
    write(root / "a" / ".DS_Store", b"x")
    write(root / "a" / "._img_000.JPEG", jpeg_bytes())
    write(root / "b" / ".cache" / "y.JPEG", jpeg_bytes())
    write(root / "b" / "readme.txt", b"x")
    assert ".ipynb_checkpoints" in ImageFolder(root).classes  # what we avoid
    classes = find_classes(root)
    assert classes == ["a", "b"]
    assert [c.path for c in list_candidates(root, classes)] == [
        "a/img_000.JPEG", "a/img_001.JPEG", "b/img_000.JPEG", "b/img_001.JPEG"]


def test_resolve_splits(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    assert resolve_splits(tmp_path, None, None) == {"train": tmp_path / "train", "val": tmp_path / "val"}
    assert resolve_splits(tmp_path, None, ["val"]) == {"val": tmp_path / "val"}
    assert resolve_splits(tmp_path / "val", "mine", None) == {"mine": tmp_path / "val"}
    with pytest.raises(ScanError, match="no folder for split.*test"):
        resolve_splits(tmp_path, None, ["test"])
    with pytest.raises(ScanError, match="pass --split NAME"):
        resolve_splits(tmp_path / "train", None, None)
    with pytest.raises(ScanError, match="not a folder"):
        resolve_splits(Path(tmp_path / "nope"), None, None)


def test_no_class_folders_is_an_error(tmp_path):
    write(tmp_path / "loose.JPEG", jpeg_bytes())
    with pytest.raises(ScanError, match="no class folders"):
        find_classes(tmp_path)


def test_different_class_lists_name_the_difference():
    with pytest.raises(ScanError, match="only in train: n03; only in val: n04"):
        check_same_classes({"train": ["n01", "n03"], "val": ["n01", "n04"]})
    check_same_classes({"train": ["a"], "val": ["a"]})


def test_a_directory_symlink_loop_is_visited_once_and_reported(tmp_path):
    root = make_folder(tmp_path, ["a", "b"], per_class=4)
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)  # a -> a/again -> a ...
    (root / "b" / "up").symlink_to(root, target_is_directory=True)  # b/up -> the split, twice over
    classes = find_classes(root)
    cands = list_candidates(root, classes)
    kept = [c.path for c in cands if not c.skip]
    assert kept == [f"{c}/img_{i:03d}.JPEG" for c in "ab" for i in range(4)]
    loops = {c.path: c.skip for c in cands if c.skip}
    assert set(loops) == {"a/again", "b/up"}
    assert all(why.startswith("symlink loop: ") for why in loops.values())


def test_a_symlinked_folder_that_is_no_loop_is_followed(tmp_path):
    root = make_folder(tmp_path / "split", ["a"], per_class=1)
    make_folder(tmp_path / "elsewhere", ["more"], per_class=2)
    (root / "a" / "more").symlink_to(tmp_path / "elsewhere" / "more", target_is_directory=True)
    tv = ImageFolder(root)
    cands = list_candidates(root, find_classes(root))
    assert [(str(root / c.path), c.label) for c in cands] == tv.samples
