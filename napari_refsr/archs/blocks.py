"""Building blocks shared by the networks: convolutions, residual blocks, bicubic upsampling."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=True)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=True)


def up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling as used inside the reference network (no antialias, a=-0.75)."""
    return F.interpolate(x, scale_factor=factor, mode="bicubic")


class ResBlock(nn.Module):
    """conv3×3 → ReLU → conv3×3, scaled, plus the input (parameter names ``conv1``/``conv2``)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = conv3x3(n_feats, n_feats)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))) * self.res_scale + x


def res_blocks(n: int, n_feats: int, res_scale: float = 1.0) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(n_feats, res_scale) for _ in range(n))


def run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Network images in [-1, 1] → [0, 1], what the VGG19 extractors take."""
    return (x + 1.0) / 2.0
