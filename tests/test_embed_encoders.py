"""embed.encoders: the registry, the timm models' shapes and names, the embedding kinds."""

import pytest
import torch

from bench.reference import ReferenceViT
from embed.checkpoint import random_model
from embed.encoders import ENCODERS, get_spec
from embed.models import Embedder, build_model

TABLE = {  # DESIGN.md: name -> (architecture, patch, dim, depth, heads)
    "vits16_800ep": ("deit_small", 16, 384, 12, 6),
    "vitb16_600ep": ("deit_base", 16, 768, 12, 12),
    "vitb4_300ep": ("deit_base_p4", 4, 768, 12, 12),
    "vitl16_600ep": ("deit_large", 16, 1024, 24, 16),
    "vitl7_200ep": ("deit_large_p7", 7, 1024, 24, 16),
}


def test_registry_is_the_design_table():
    assert {n: (s.arch, s.patch, s.dim, s.depth, s.heads) for n, s in ENCODERS.items()} == TABLE


@pytest.mark.parametrize("name", list(TABLE))
def test_model_has_msn_parameter_names_and_shapes(name):
    spec = get_spec(name)
    with torch.device("meta"):
        ours = build_model(spec).state_dict()
        ref = ReferenceViT(spec.patch, spec.dim, depth=spec.depth, heads=spec.heads).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert ours["pos_embed"].shape == (1, (224 // spec.patch) ** 2 + 1, spec.dim)
    assert spec.preprocess.resize == 256 and spec.preprocess.crop == 224


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match="did you mean vits16_800ep.*valid names: vits16_800ep"):
        get_spec("vits16_800")


def test_kinds_against_a_plain_vit():
    spec = get_spec("vits16_800ep")
    vit = random_model(spec).eval()
    ref = ReferenceViT(spec.patch, spec.dim, depth=spec.depth, heads=spec.heads).eval()
    ref.load_state_dict(vit.state_dict(), strict=False)
    ref.norm.load_state_dict(vit.norm.state_dict())
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        pre = ref.forward_blocks(x)
        torch.testing.assert_close(Embedder(vit, "cls_prenorm")(x), pre, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(Embedder(vit, "cls")(x), ref.norm(pre), rtol=1e-4, atol=1e-4)
        assert Embedder(vit, "mean")(x).shape == (3, 384)
    with pytest.raises(ValueError, match="unknown embedding kind"):
        Embedder(vit, "avg")
