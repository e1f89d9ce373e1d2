"""The MSN encoders: a registry of the five official checkpoints and their preprocessing.

Each entry names the official checkpoint (`<name>.pth.tar`), the architecture in the MSN
code base (`src/deit.py`), and carries its preprocessing. The models themselves are in
`embed.models` (this module needs no torch, so command lines can list the names quickly).

    from embed.encoders import get_spec
    spec = get_spec("vitb16_600ep"); spec.dim, spec.preprocess.crop
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("cls_prenorm", "cls", "mean")  # what one embedding row is; see embed.models.Embedder


@dataclass(frozen=True)
class Preprocess:
    """The reference path's transform: Resize(resize) bilinear antialiased, CenterCrop(crop),
    ImageNet mean/std. Every decoder implements exactly this one; `interpolation` records it in
    each group's identity (the decoders have no other filter to choose)."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class EncoderSpec:
    """One MSN checkpoint: architecture and preprocessing."""

    name: str
    arch: str
    patch: int
    dim: int
    depth: int
    heads: int
    preprocess: Preprocess = Preprocess()

    def describe(self) -> dict:
        """Everything about the encoder, for store attributes and logs."""
        return asdict(self)


ENCODERS: dict[str, EncoderSpec] = {
    s.name: s
    for s in (
        EncoderSpec("vits16_800ep", "deit_small", patch=16, dim=384, depth=12, heads=6),
        EncoderSpec("vitb16_600ep", "deit_base", patch=16, dim=768, depth=12, heads=12),
        EncoderSpec("vitb4_300ep", "deit_base_p4", patch=4, dim=768, depth=12, heads=12),
        EncoderSpec("vitl16_600ep", "deit_large", patch=16, dim=1024, depth=24, heads=16),
        EncoderSpec("vitl7_200ep", "deit_large_p7", patch=7, dim=1024, depth=24, heads=16),
    )
}


def get_spec(name: str) -> EncoderSpec:
    """The registry entry for `name`; an unknown name lists the close matches."""
    if name in ENCODERS:
        return ENCODERS[name]
    close = difflib.get_close_matches(name, ENCODERS, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise KeyError(f"unknown encoder {name!r}: {hint}valid names: {', '.join(ENCODERS)}")
