"""The MSN ViTs as timm VisionTransformers (fused attention), whose parameter names are those
of MSN's deit.py, and the module that turns one into embeddings of a kind.

    from embed.models import build_model, Embedder
    vit = build_model(get_spec("vitb16_600ep"))            # random init
    rows = Embedder(vit, "cls_prenorm")(images)             # [B, 3, 224, 224] -> [B, D]
"""

from __future__ import annotations

import torch
from torch import nn

from embed.encoders import KINDS, EncoderSpec


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
