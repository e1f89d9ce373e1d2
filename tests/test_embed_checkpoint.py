"""embed.checkpoint: strict loading of the official layout, loud failures, random weights."""

import logging

import pytest
import torch

from embed.checkpoint import CheckpointError, load_encoder, resolve_weights, save_random_checkpoint
from embed.encoders import get_spec


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "vits16_800ep.pth.tar"
    return save_random_checkpoint(path, get_spec("vits16_800ep"), seed=3)


def test_official_layout(ckpt):
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert {"encoder", "target_encoder", "prototypes", "opt", "epoch"} <= set(raw)
    official = {"encoder", "opt", "prototypes", "target_encoder", "epoch", "loss", "batch_size",
                "world_size", "lr", "temperature"}
    assert set(raw) - official == {"msnpipe_random_weights"}
    keys = list(raw["target_encoder"])
    assert all(k.startswith("module.") for k in keys)
    assert {"module.fc.fc1.weight", "module.fc.bn1.running_mean", "module.fc.fc3.weight",
            "module.cls_token", "module.blocks.11.mlp.fc2.bias"} <= set(keys)


def test_loads_exactly_the_target_encoder(ckpt, caplog):
    caplog.set_level(logging.INFO, logger="embed")
    model, info = load_encoder(get_spec("vits16_800ep"), ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)["target_encoder"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, raw[f"module.{k}"], rtol=0, atol=0)
    assert len(info["weights_sha256"]) == 64 and info["random_weights"] is True
    assert "ignoring the projection head (fc." in caplog.text
    assert "ignoring batch_size, encoder, epoch" in caplog.text


def _edited(ckpt, tmp_path, edit):
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(raw)
    torch.save(raw, tmp_path / "edited.pth.tar")
    return tmp_path / "edited.pth.tar"


def test_wrong_architecture_names_tensors(ckpt):
    with pytest.raises(CheckpointError, match=r"does not fit vitl16_600ep \(deit_large.*"
                       r"144 missing \[blocks.12.attn.proj.bias.*150 misshapen"):
        load_encoder(get_spec("vitl16_600ep"), ckpt)


def test_missing_or_unexpected_backbone_tensors(ckpt, tmp_path):
    gone = _edited(ckpt, tmp_path, lambda r: r["target_encoder"].pop("module.norm.weight"))
    with pytest.raises(CheckpointError, match=r"1 missing \[norm.weight\]"):
        load_encoder(get_spec("vits16_800ep"), gone)
    extra = _edited(ckpt, tmp_path, lambda r: r["target_encoder"].update(
        {"module.blocks.12.norm1.weight": torch.ones(384)}))
    with pytest.raises(CheckpointError, match=r"1 unexpected \[blocks.12.norm1.weight\]"):
        load_encoder(get_spec("vits16_800ep"), extra)
    no_target = _edited(ckpt, tmp_path, lambda r: r.pop("target_encoder"))
    with pytest.raises(CheckpointError, match="no 'target_encoder'.*it holds: encoder, opt"):
        load_encoder(get_spec("vits16_800ep"), no_target)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(CheckpointError, match="make weights ENCODER=vits16_800ep"):
        load_encoder(get_spec("vits16_800ep"), tmp_path / "nope.pth.tar")


def test_resolve_weights(tmp_path):
    assert resolve_weights(str(tmp_path), "vitb4_300ep", False) == str(tmp_path / "vitb4_300ep.pth.tar")
    assert resolve_weights("random", "x", True) == "random"
    assert resolve_weights("/a/b.pth.tar", "x", False) == "/a/b.pth.tar"
    with pytest.raises(CheckpointError, match="must be a folder"):
        resolve_weights("/a/b.pth.tar", "x", True)


def test_random_weights_are_marked(caplog):
    _, info = load_encoder(get_spec("vits16_800ep"), "random")
    assert info == {"weights": "random", "weights_sha256": None, "random_weights": True}
    assert "RANDOM weights" in caplog.text and "make weights" in caplog.text


@pytest.mark.parametrize("content", [b"", b"\x8f\x13 random bytes, not a checkpoint" * 40])
def test_an_empty_or_garbage_weights_file_gets_one_line_naming_it(tmp_path, content):
    path = tmp_path / "vits16_800ep.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{path}: not a PyTorch checkpoint"):
        load_encoder(get_spec("vits16_800ep"), path)


def test_a_legacy_format_checkpoint_loads_like_the_zip_one(ckpt, tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) writes the pre-1.6 format, which
    cannot be memory-mapped; it once read as 'not a PyTorch checkpoint ... download it again'."""
    spec = get_spec("vits16_800ep")
    legacy = tmp_path / "legacy.pth.tar"
    torch.save(torch.load(ckpt, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] != b"PK"  # not a zip
    zipped, _ = load_encoder(spec, ckpt)
    old, info = load_encoder(spec, legacy)
    for (name, a), (_, b) in zip(zipped.state_dict().items(), old.state_dict().items()):
        assert torch.equal(a, b), name
    assert info["weights_sha256"] != load_encoder(spec, ckpt)[1]["weights_sha256"]


def test_a_pickle_of_other_objects_is_named_for_what_it_is(tmp_path):
    """A real pickle that weights_only loading refuses is not a damaged download; the message says
    what it holds, and how to load it if it is trusted."""
    path = tmp_path / "objects.pth.tar"
    torch.save({"target_encoder": {}, "when": __import__("datetime").date(2022, 4, 14)}, path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors") as e:
        load_encoder(get_spec("vits16_800ep"), path)
    assert "download it again" not in str(e.value) and "datetime" in str(e.value)
