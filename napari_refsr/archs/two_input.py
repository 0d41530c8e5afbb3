"""A RefSR network behind a plain two-tensor interface, for model-zoo consumers (bioimage.io).

napari-refsr's own pipeline feeds the network four tensors (LR, LR↑, Ref, Ref↓↑) in [-1, 1] and
tiles the LR image; tools that only know "tensors in, tensors out" get this module instead:
``forward(lr, reference)`` with both in [0, 1] (the package's pre-processing normalises them),
returning the ×4 image in [0, 1]. LR↑ and Ref↓↑ are made inside with the same PIL-exact bicubic
the pipeline uses, so both paths compute the same image. Grayscale (one channel) is replicated
to RGB and the output averaged back, as :mod:`napari_refsr.normalize` does.

Only the network's own modules, :mod:`napari_refsr.search` and :mod:`napari_refsr.resize` are
used, so :mod:`napari_refsr.zoo` can ship this file with them as one self-contained source.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..resize import down_up, resize_bicubic


class TwoInputSR(nn.Module):
    """``(lr (N, C, h, w), reference (N, C, H, W))`` in [0, 1] → ``(N, C, 4h, 4w)`` in [0, 1].

    ``C`` is ``channels`` (1 or 3); H and W of the reference are cropped to multiples of 4."""

    def __init__(self, network: nn.Module, channels: int = 3):
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.network = network
        self.channels = channels

    def forward(self, lr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or reference.dim() != 4 or lr.shape[1] != self.channels \
                or reference.shape[1] != self.channels:
            raise ValueError(f"expected (N, {self.channels}, H, W) tensors, got {tuple(lr.shape)} and "
                             f"{tuple(reference.shape)}")
        h4, w4 = (reference.shape[2] // 4) * 4, (reference.shape[3] // 4) * 4
        lr = lr.float().expand(-1, 3, -1, -1) * 2.0 - 1.0
        ref = reference[:, :, :h4, :w4].float().expand(-1, 3, -1, -1) * 2.0 - 1.0
        lr_up = resize_bicubic(lr, (lr.shape[2] * 4, lr.shape[3] * 4))
        out = self.network(lr, lr_up, ref, down_up(ref, 4))[0]
        out = (out + 1.0) / 2.0
        return out.mean(dim=1, keepdim=True) if self.channels == 1 else out
