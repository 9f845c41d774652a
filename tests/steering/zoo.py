"""Real torchvision and timm networks built without weights, one instance per name, shared by the tests.

Every test leaves a model unsteered, so one random-init instance per architecture serves them all.
Inception needs inputs of at least 75 pixels; everything else runs at 64.
"""

from __future__ import annotations

import functools

import ct_tune  # noqa: F401  (before timm and torchvision: see ct_tune/_torchvision_compat.py)

import timm
import torch
import torchvision.models as tvm
from torch import nn

LARGE_INPUT = {"inception_v3"}
# timm's vgg11 with a 512-wide first pre-logits conv instead of 4096: the same modules and ReLUs with
# 24M weights instead of 129M, which every deep copy and build of the tests would otherwise move
# ViT, DeiT and Swin are built for 64-pixel inputs (4x4 patches of 16; Swin's windows shrink to fit);
# ConvNeXt's layer scale starts at 1, not 1e-6, so that its blocks' activations show in the output
TIMM_KWARGS = {
    "convnext_atto": {"ls_init_value": 1.0},
    "vgg11": {"mlp_ratio": 0.125},
    "vit_tiny_patch16_224": {"img_size": 64},
    "deit_tiny_patch16_224": {"img_size": 64},
    "swin_tiny_patch4_window7_224": {"img_size": 64},
}


@functools.cache
def torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return tvm.get_model(name, num_classes=10, **kwargs).eval()


@functools.cache
def timm_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **TIMM_KWARGS.get(name, {})).eval()


def example(name: str, batch: int = 1) -> torch.Tensor:
    size = 96 if name in LARGE_INPUT else 64
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
