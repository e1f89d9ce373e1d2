"""The reference path (msn-embeddings' compute_embeddings.py), written out independently of
embed/: PIL + torchvision transforms, and a plain PyTorch ViT with MSN deit.py's structure
and attention loaded straight from a checkpoint. bench/ times it; tests compare against it.
Its probe, evaluate_embeddings.py, is bench/reference_probe.py (numpy and scikit-learn only,
as the script imports).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn

REFERENCE_TRANSFORM = T.Compose([
    T.Resize(size=256), T.CenterCrop(size=224), T.ToTensor(),
    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])


def load_image(path) -> torch.Tensor:
    """[3, 224, 224], exactly as the reference's ImageFolder + transform gives it."""
    with open(path, "rb") as f:
        return REFERENCE_TRANSFORM(Image.open(f).convert("RGB"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class ReferenceViT(nn.Module):
    """MSN's VisionTransformer, only what forward_blocks(x, 1) needs."""

    def __init__(self, patch: int, dim: int, *, depth: int, heads: int):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (224 // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(len(x), -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x[:, 0]


def reference_vit(checkpoint_path, patch=16, dim=384, *, depth=12, heads=6) -> ReferenceViT:
    """Load as the reference script does: target_encoder, 'module.' stripped, head dropped."""
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = {k.replace("module.", ""): v for k, v in ckpt["target_encoder"].items()}
    model = ReferenceViT(patch, dim, depth=depth, heads=heads)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    return model.eval()


def embed_folder(root, model: ReferenceViT, batch_size: int = 16, *, num_workers: int = 0,
                 device: str | torch.device = "cpu", limit: int | None = None):
    """The reference embedding loop: ImageFolder + PIL, DataLoader(batch 16, no workers),
    fp32 eager `forward_blocks` (over the first `limit` images only, when given). Returns
    (embeddings [N, D], labels [N], paths)."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    data = ImageFolder(root, transform=REFERENCE_TRANSFORM)
    if limit is not None:
        data.samples, data.targets = data.samples[:limit], data.targets[:limit]
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    rows = []
    with torch.no_grad():
        for x, _ in loader:
            rows.append(model.forward_blocks(x.to(device)).cpu())
    return torch.cat(rows).numpy(), np.array(data.targets), [p for p, _ in data.samples]
