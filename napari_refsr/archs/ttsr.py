"""TTSR: Texture Transformer Network for Image Super-Resolution (Yang et al., CVPR 2020).

The network, written to match the published model exactly: module and parameter names follow
the reference implementation, so its checkpoints (``MainNet.*`` and ``LTE.*`` keys) load
strictly (other formats: :mod:`.ttsr_convert`). Scale is fixed at ×4; inputs and output are in
[-1, 1]; the shared interface is :class:`~napari_refsr.archs.base.RefSRNetwork`.

Pieces:
* :class:`~napari_refsr.archs.vgg.LTE` — learnable texture extractor: VGG19 up to relu3_1 with
  ImageNet normalisation.
* texture search / transfer (hard and soft attention) — :mod:`napari_refsr.search`, exact
  and memory-bounded, over one or several references.
* :class:`MainNet` — SFE, CSFI2, CSFI3 and MergeTail cross-scale feature integration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..phases import PHASES
from ..search import relevance, search, transfer
from .base import NetworkConfig, ReferenceBank, RefSRNetwork, block_counts
from .blocks import conv1x1, conv3x3, res_blocks, run, up
from .vgg import LTE

__all__ = ["TTSRConfig", "TTSR", "TTSROutput", "LTE", "ReferenceBank"]


@dataclass
class TTSRConfig(NetworkConfig):
    """Architecture of a TTSR network (defaults: the published model)."""

    n_feats: int = 64
    num_res_blocks: tuple[int, int, int, int] = (16, 16, 8, 4)
    res_scale: float = 1.0
    scale: int = 4
    global_skip: bool = False  # add LR↑ to the output (residual learning); False = published TTSR
    search_phases: int = 1  # reference copies per axis searched by default (napari_refsr.phases); 1 = published
    arch: str = field(default="ttsr")

    def __post_init__(self) -> None:
        self.num_res_blocks = block_counts(self.num_res_blocks, 4, "num_res_blocks")
        if self.search_phases not in PHASES:
            raise ValueError(f"search_phases must be one of {PHASES}, got {self.search_phases!r}")
        self.check_shared("TTSR")


class SFE(nn.Module):
    """Shallow feature extraction on the LR image."""

    def __init__(self, num_res_blocks: int, n_feats: int, res_scale: float):
        super().__init__()
        self.conv_head = conv3x3(3, n_feats)
        self.RBs = res_blocks(num_res_blocks, n_feats, res_scale)
        self.conv_tail = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_head(x))
        return self.conv_tail(run(self.RBs, x)) + x


class CSFI2(nn.Module):
    """Cross-scale feature integration between the ×1 and ×2 branches."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = conv3x3(n_feats * 2, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 2, n_feats)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x12 = F.relu(self.conv12(up(x1, 2)))
        x21 = F.relu(self.conv21(x2))
        x1 = F.relu(self.conv_merge1(torch.cat((x1, x21), dim=1)))
        x2 = F.relu(self.conv_merge2(torch.cat((x2, x12), dim=1)))
        return x1, x2


class CSFI3(nn.Module):
    """Cross-scale feature integration between the ×1, ×2 and ×4 branches."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, 2)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv31_1 = conv3x3(n_feats, n_feats, 2)
        self.conv31_2 = conv3x3(n_feats, n_feats, 2)
        self.conv32 = conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge3 = conv3x3(n_feats * 3, n_feats)

    def forward(self, x1, x2, x3):
        x12 = F.relu(self.conv12(up(x1, 2)))
        x13 = F.relu(self.conv13(up(x1, 4)))
        x21 = F.relu(self.conv21(x2))
        x23 = F.relu(self.conv23(up(x2, 2)))
        x31 = F.relu(self.conv31_2(F.relu(self.conv31_1(x3))))
        x32 = F.relu(self.conv32(x3))
        x1 = F.relu(self.conv_merge1(torch.cat((x1, x21, x31), dim=1)))
        x2 = F.relu(self.conv_merge2(torch.cat((x2, x12, x32), dim=1)))
        x3 = F.relu(self.conv_merge3(torch.cat((x3, x13, x23), dim=1)))
        return x1, x2, x3


class MergeTail(nn.Module):
    """Merges the three branches at ×4 into the RGB output in [-1, 1]."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv_merge = conv3x3(n_feats * 3, n_feats)
        self.conv_tail1 = conv3x3(n_feats, n_feats // 2)
        self.conv_tail2 = conv1x1(n_feats // 2, 3)

    def forward(self, x1, x2, x3, skip: torch.Tensor | None = None):
        x13 = F.relu(self.conv13(up(x1, 4)))
        x23 = F.relu(self.conv23(up(x2, 2)))
        x = F.relu(self.conv_merge(torch.cat((x3, x13, x23), dim=1)))
        x = self.conv_tail2(self.conv_tail1(x))
        return torch.clamp(x if skip is None else x + skip, -1, 1)


class MainNet(nn.Module):
    """Backbone: LR features fused with transferred textures T (scaled by S) at ×1, ×2, ×4."""

    def __init__(self, num_res_blocks: Sequence[int], n_feats: int, res_scale: float):
        super().__init__()
        n0, n1, n2, n3 = num_res_blocks
        self.SFE = SFE(n0, n_feats, res_scale)
        self.conv11_head = conv3x3(256 + n_feats, n_feats)
        self.RB11 = res_blocks(n1, n_feats, res_scale)
        self.conv11_tail = conv3x3(n_feats, n_feats)
        self.conv12 = conv3x3(n_feats, n_feats * 4)
        self.ps12 = nn.PixelShuffle(2)
        self.conv22_head = conv3x3(128 + n_feats, n_feats)
        self.ex12 = CSFI2(n_feats)
        self.RB21 = res_blocks(n2, n_feats, res_scale)
        self.RB22 = res_blocks(n2, n_feats, res_scale)
        self.conv21_tail = conv3x3(n_feats, n_feats)
        self.conv22_tail = conv3x3(n_feats, n_feats)
        self.conv23 = conv3x3(n_feats, n_feats * 4)
        self.ps23 = nn.PixelShuffle(2)
        self.conv33_head = conv3x3(64 + n_feats, n_feats)
        self.ex123 = CSFI3(n_feats)
        self.RB31 = res_blocks(n3, n_feats, res_scale)
        self.RB32 = res_blocks(n3, n_feats, res_scale)
        self.RB33 = res_blocks(n3, n_feats, res_scale)
        self.conv31_tail = conv3x3(n_feats, n_feats)
        self.conv32_tail = conv3x3(n_feats, n_feats)
        self.conv33_tail = conv3x3(n_feats, n_feats)
        self.merge_tail = MergeTail(n_feats)

    def forward(self, x, S, T_lv3, T_lv2, T_lv1, skip: torch.Tensor | None = None):
        x11 = self.SFE(x)
        # stage 1 (×1): soft attention on the fused level-3 texture
        x11 = x11 + self.conv11_head(torch.cat((x11, T_lv3), dim=1)) * S
        x11 = x11 + self.conv11_tail(run(self.RB11, x11))
        # stage 2 (×1, ×2)
        x21 = x11
        x22 = F.relu(self.ps12(self.conv12(x11)))
        x22 = x22 + self.conv22_head(torch.cat((x22, T_lv2), dim=1)) * up(S, 2)
        r21, r22 = self.ex12(x21, x22)
        r21, r22 = run(self.RB21, r21), run(self.RB22, r22)
        x21 = x21 + self.conv21_tail(r21)
        x22 = x22 + self.conv22_tail(r22)
        # stage 3 (×1, ×2, ×4)
        x31, x32 = x21, x22
        x33 = F.relu(self.ps23(self.conv23(x22)))
        x33 = x33 + self.conv33_head(torch.cat((x33, T_lv1), dim=1)) * up(S, 4)
        r31, r32, r33 = self.ex123(x31, x32, x33)
        r31, r32, r33 = run(self.RB31, r31), run(self.RB32, r32), run(self.RB33, r33)
        x31 = x31 + self.conv31_tail(r31)
        x32 = x32 + self.conv32_tail(r32)
        x33 = x33 + self.conv33_tail(r33)
        return self.merge_tail(x31, x32, x33, skip)


class TTSROutput(NamedTuple):
    """Network output; a tuple whose first item is the SR image, as the reference returns."""

    sr: torch.Tensor  # (N, 3, 4H, 4W) in [-1, 1]
    S: torch.Tensor  # (N, 1, H, W) soft attention (max relevance)
    T_lv3: torch.Tensor
    T_lv2: torch.Tensor
    T_lv1: torch.Tensor
    index: torch.Tensor  # (N, H, W) hard attention: global patch index into the reference set

    @property
    def textures(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T_lv3, T_lv2, T_lv1): what the transferal perceptual loss compares with."""
        return self.T_lv3, self.T_lv2, self.T_lv1


class TTSR(RefSRNetwork):
    """The full TTSR model: LTE + texture search/transfer + MainNet."""

    normalize_query = True
    texture_loss = "tpl"  # the transferal perceptual loss, through a frozen copy of the LTE
    trainable_extractor = True  # the LTE learns, at its own learning rate (optim.lr_lte)

    def __init__(self, config: TTSRConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or TTSRConfig(**kwargs)
        cfg = self.config
        self.MainNet = MainNet(cfg.num_res_blocks, cfg.n_feats, cfg.res_scale)
        self.LTE = LTE()
        if cfg.global_skip:  # start exactly at LR↑: the network learns a residual from zero.
            # A random residual at init teaches the first steps to silence it, which they do
            # fastest by killing the ReLU after conv_merge for good (seen with a scaled-down init).
            with torch.no_grad():
                self.MainNet.merge_tail.conv_tail2.weight.zero_()
                self.MainNet.merge_tail.conv_tail2.bias.zero_()

    @property
    def texture_extractor(self) -> LTE:
        return self.LTE

    def search_transfer(self, query: torch.Tensor, bank: ReferenceBank, search_budget: int | None = None):
        """Hard and soft attention for one sample: (S, T_lv3, T_lv2, T_lv1, index)."""
        budget = self._budget(search_budget)
        if torch.is_grad_enabled() and query.requires_grad:
            with torch.no_grad():
                _, index = search(query, bank.keys, normalize_query=self.normalize_query, budget_bytes=budget)
            s = relevance(query, bank.keys, index, normalize_query=self.normalize_query)
        else:
            s, index = search(query, bank.keys, normalize_query=self.normalize_query, budget_bytes=budget)
        return (s[None], *self.textures(index, bank), index)

    def textures(self, index: torch.Tensor, bank: ReferenceBank):
        """Transferred textures (T_lv3, T_lv2, T_lv1) for hard-attention indices (H, W)."""
        return transfer(index, bank.lv3, 1), transfer(index, bank.lv2, 2), transfer(index, bank.lv1, 4)

    def decode(self, lr: torch.Tensor, lr_up: torch.Tensor, S: torch.Tensor, t3, t2, t1) -> torch.Tensor:
        """SR image (N, 3, 4H, 4W) from the LR batch, S (N, 1, H, W) and the textures (the MainNet)."""
        return self.MainNet(lr, S, t3, t2, t1, lr_up if self.config.global_skip else None)

    def forward_bank(self, lr: torch.Tensor, lr_up: torch.Tensor, banks: Sequence[ReferenceBank], *,
                     search_budget: int | None = None) -> TTSROutput:
        """SR for a batch whose references were encoded with :meth:`encode_references`."""
        query = self.extract(lr_up)[2]
        if len(banks) == 1 and lr.shape[0] > 1:
            banks = list(banks) * lr.shape[0]
        parts = [self.search_transfer(query[b], banks[b], search_budget) for b in range(lr.shape[0])]
        s, t3, t2, t1, index = (torch.stack(p) for p in zip(*parts))
        return TTSROutput(self.decode(lr, lr_up, s, t3, t2, t1), s, t3, t2, t1, index)
