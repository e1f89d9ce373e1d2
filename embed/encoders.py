"""The MSN encoders: a registry of the five official checkpoints and their preprocessing.

Each entry names the official checkpoint (`<name>.pth.tar`), the architecture in the MSN
code base (`src/deit.py`), and carries its preprocessing. Models are timm
VisionTransformers (fused attention), whose parameter names are those of MSN's deit.py.

    from embed.encoders import get_spec, build_model
    spec = get_spec("vitb16_600ep"); model = build_model(spec)   # random init
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("cls_prenorm", "cls", "mean")  # what one embedding row is; see `Embedder`


@dataclass(frozen=True)
class Preprocess:
    """The reference path's transform: Resize(resize) bilinear antialiased, CenterCrop(crop)."""

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


def build_model(spec: EncoderSpec, init: bool = True) -> nn.Module:
    """A timm ViT with the architecture of `spec`, no head; `init=False` skips timm's weight
    initialisation (for weights about to be loaded)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=spec.preprocess.crop, patch_size=spec.patch, embed_dim=spec.dim,
        depth=spec.depth, num_heads=spec.heads, mlp_ratio=4.0, qkv_bias=True,
        num_classes=0, global_pool="token",  # LayerNorm eps 1e-6 is timm's default
        weight_init="" if init else "skip",
    )


class Embedder(nn.Module):
    """images [B, 3, 224, 224] -> embeddings [B, D] of one kind.

    cls_prenorm: class token after the last block, before the final LayerNorm (MSN's
    `forward_blocks(x, 1)`, the reference path); cls: after the final norm; mean: mean of
    the patch tokens after the final norm.
    """

    def __init__(self, vit: nn.Module, kind: str = "cls_prenorm"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown embedding kind {kind!r}; one of {', '.join(KINDS)}")
        self.vit, self.kind = vit, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v.patch_embed(x)  # [B, P, D]
        x = v.norm_pre(v.patch_drop(v._pos_embed(x)))  # [B, 1 + P, D]
        x = v.blocks(x)  # [B, 1 + P, D]
        if self.kind == "cls_prenorm":
            return x[:, 0]
        x = v.norm(x)
        return x[:, 0] if self.kind == "cls" else x[:, 1:].mean(dim=1)
