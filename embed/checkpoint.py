"""Load official MSN checkpoints strictly; write random ones in the same layout.

An official file (`https://dl.fbaipublicfiles.com/msn/<name>.pth.tar`) is a dict with
`encoder`, `target_encoder`, `prototypes`, `opt`, `epoch`, ... . The backbone we embed
with is `target_encoder`, keys prefixed `module.`; its projection head `fc.*` and every
top-level entry other than `target_encoder` are ignored by name, and logged. Every
backbone tensor must be present and of the right shape, or loading fails naming them.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from embed.encoders import EncoderSpec
from embed.models import build_model
from msnpipe.runtime import UserError, few

log = logging.getLogger("embed")
HEAD_PREFIXES = ("fc.", "pred.")  # MSN's projection head and (unused) predictor
RANDOM_MARK = "msnpipe_random_weights"  # top-level key of checkpoints from save_random_checkpoint


class CheckpointError(UserError):
    """A checkpoint that does not hold the backbone the encoder expects."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _backbone(ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(ckpt, dict) or "target_encoder" not in ckpt:
        keys = ", ".join(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: no 'target_encoder' in the checkpoint (it holds: {keys})")
    ignored = sorted(k for k in ckpt if k != "target_encoder")
    log.info("%s: using target_encoder; ignoring %s", path.name, ", ".join(ignored) or "nothing")
    return {k.removeprefix("module."): v for k, v in ckpt["target_encoder"].items()}


def check_state(state: dict[str, torch.Tensor], model: nn.Module, spec: EncoderSpec, *, path: Path) -> None:
    """Every backbone tensor present with its shape, nothing else but the head."""
    want = model.state_dict()
    head = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
    if head:
        log.info("%s: ignoring the projection head (%s)", path.name, few(head, 4))
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want) - set(head))
    shapes = sorted(
        f"{k} {list(state[k].shape)} (expected {list(want[k].shape)})"
        for k in set(want) & set(state) if state[k].shape != want[k].shape
    )
    if missing or extra or shapes:
        raise CheckpointError(
            f"{path}: does not fit {spec.name} ({spec.arch}: patch {spec.patch}, dim {spec.dim}, "
            f"depth {spec.depth}, heads {spec.heads}): {len(missing)} missing [{few(missing, 4)}], "
            f"{len(shapes)} misshapen [{few(shapes, 2)}], {len(extra)} unexpected [{few(extra, 4)}]"
        )


def random_model(spec: EncoderSpec, seed: int = 0) -> nn.Module:
    """A ViT with LeCun-normal weights: unlike timm's std-0.02 init, its embeddings depend
    clearly on the image, so demos and tests of random weights are not vacuous."""
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, fan_in**-0.5)
    return model


def _load(path: Path) -> dict:
    """torch.load of an official checkpoint, memory-mapped when it is in the zip format (only what
    is used is read; the legacy pre-1.6 format is read whole). A pickle holding objects other than
    tensors and plain types, and a file that is no checkpoint at all, are CheckpointErrors naming
    the file and what the loader said."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (the file is empty)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=head == b"PK\x03\x04")
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:  # bytes that are no pickle at all
            raise _not_a_checkpoint(path, e) from None
        raise CheckpointError(
            f"{path}: holds objects other than tensors and plain types ({found.group(1)}), which msnpipe "
            "does not unpickle; an official MSN checkpoint holds none. Save its target_encoder state dict "
            "alone, or fetch the official file with `make weights`") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:  # zip, tar, pickle and EOF errors
        raise _not_a_checkpoint(path, e) from None


def _not_a_checkpoint(path: Path, e: Exception) -> CheckpointError:
    text = str(e).split("WeightsUnpickler error:", 1)[-1].strip()  # the unpickler's own words
    first = text.splitlines()[0][:200] if text else type(e).__name__
    return CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {first}); "
                           f"download it again with `make weights`")


def load_encoder(spec: EncoderSpec, weights: str | Path) -> tuple[nn.Module, dict]:
    """The model of `spec` with weights from an MSN checkpoint, or random for "random"."""
    if str(weights) == "random":
        log.warning("%s: RANDOM weights (demo/test only); `make weights` fetches the real ones",
                    spec.name)
        return random_model(spec).eval(), {"weights": "random", "weights_sha256": None,
                                           "random_weights": True}
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (run `make weights ENCODER={spec.name}`)")
    ckpt = _load(path)
    state = _backbone(ckpt, path)
    with torch.device("meta"):  # no memory and no init for weights about to be replaced
        model = build_model(spec, init=False)
    check_state(state, model, spec, path=path)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)},
                          assign=True)
    log.info("%s: loaded %s (epoch %s)", spec.name, path, ckpt.get("epoch", "?"))
    random = bool(ckpt.get(RANDOM_MARK, False))
    if random:
        log.warning("%s: %s holds RANDOM weights (demo/test only); `make weights` fetches the "
                    "real ones", spec.name, path.name)
    return model.eval(), {"weights": str(path.resolve()), "weights_sha256": sha256_file(path),
                          "random_weights": random}


def resolve_weights(weights: str, name: str, several: bool) -> str:
    """A checkpoint file for encoder `name`: WEIGHTS itself, or WEIGHTS/<name>.pth.tar."""
    if weights == "random":
        return weights
    path = Path(weights)
    if path.is_dir():
        return str(path / f"{name}.pth.tar")
    if several:
        raise CheckpointError(f"{path}: with several encoders, --weights must be a folder "
                              "holding <name>.pth.tar for each")
    return weights


def save_random_checkpoint(path: Path, spec: EncoderSpec, seed: int = 0) -> Path:
    """A random checkpoint in the exact official layout (for demos and tests)."""
    model = random_model(spec, seed)
    hidden, out = 2048, 256
    head = nn.Sequential()
    head.add_module("fc1", nn.Linear(spec.dim, hidden))
    head.add_module("bn1", nn.BatchNorm1d(hidden))
    head.add_module("gelu1", nn.GELU())
    head.add_module("fc2", nn.Linear(hidden, hidden))
    head.add_module("bn2", nn.BatchNorm1d(hidden))
    head.add_module("gelu2", nn.GELU())
    head.add_module("fc3", nn.Linear(hidden, out))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state |= {f"module.fc.{k}": v for k, v in head.state_dict().items()}
    prototypes = torch.randn(1024, out)
    ckpt = {
        "encoder": {k: v.clone() for k, v in state.items()},
        "opt": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
        "prototypes": prototypes,
        "target_encoder": state,
        "epoch": 800,
        "loss": 2.5,
        "batch_size": 64,
        "world_size": 16,
        "lr": 0.001,
        "temperature": 0.1,
        RANDOM_MARK: True,  # not in official files; lets stores say their weights are random
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path
