"""SRNTT: Image Super-Resolution by Neural Texture Transfer (Zhang et al., CVPR 2019).

TTSR's ancestor. Textures are matched and swapped in a *fixed* VGG19 feature space, then fused
with the LR content by a residual network at ×1, ×2 and ×4. Scale ×4; inputs and output in
[-1, 1], like :class:`~napari_refsr.archs.ttsr.TTSR`; both share the interface of
:class:`~napari_refsr.archs.base.RefSRNetwork` (``encode_references``, ``forward_bank``,
``forward``, ``extract``), so the pipeline, the CLI and the front ends run either network.

Pieces:
* feature extractor — VGG19 up to relu3_1 (:class:`~napari_refsr.archs.vgg.LTE`'s layers and
  ImageNet normalisation), frozen: ImageNet weights, never trained.
* matching — every 3×3 relu3_1 patch of LR↑ against every patch of Ref↓↑, inner product with the
  *reference* patch normalised: ``search(..., normalize_query=False)`` of :mod:`napari_refsr.search`.
* swapping — the matched patches of the *original* Ref's relu3_1 / relu2_1 / relu1_1 (3/6/12
  wide, stride 1/2/4), averaged where they overlap: ``transfer(..., average_overlaps=True)``.
* :class:`ContentExtractor` and three :class:`TransferStage` s with a global bilinear skip.

Layer layout follows the public PyTorch port (S-aiueo32/srntt-pytorch: no batch norm,
LeakyReLU(0.1), sub-pixel ×2, similarity weighting ``M · sigmoid(a·S + b)`` per scale, a bilinear
×4 skip, images in [0, 1] inside); :func:`~napari_refsr.archs.srntt_convert.convert_srntt_pytorch`
maps its checkpoints. The
network works in [0, 1] internally and returns ``clamp(2·sr − 1, −1, 1)`` (clamp, not tanh).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import RefSRError
from ..search import EPS, patch_norms, search, transfer
from .base import NetworkConfig, ReferenceBank, RefSRNetwork, block_counts
from .blocks import ResBlock, conv3x3, run, to_unit
from .vgg import LTE

__all__ = ["SRNTTConfig", "SRNTT", "SRNTTOutput"]

LEAK = 0.1  # LeakyReLU slope of the heads and sub-pixel layers


@dataclass
class SRNTTConfig(NetworkConfig):
    """Architecture of an SRNTT network (defaults: the paper's sizes as in the public port)."""

    n_feats: int = 64
    content_blocks: int = 16  # residual blocks of the content extractor
    transfer_blocks: tuple[int, int, int] = (16, 16, 16)  # per texture-transfer scale ×1, ×2, ×4
    use_weights: bool = True  # similarity weighting of the swapped maps M
    scale: int = 4
    arch: str = field(default="srntt")

    def __post_init__(self) -> None:
        if isinstance(self.transfer_blocks, int):
            self.transfer_blocks = (self.transfer_blocks,) * 3
        self.transfer_blocks = block_counts(self.transfer_blocks, 3, "transfer_blocks")
        if int(self.content_blocks) < 0:
            raise ValueError(f"content_blocks must be >= 0, got {self.content_blocks}")
        self.content_blocks = int(self.content_blocks)
        self.check_shared("SRNTT")
        if not isinstance(self.use_weights, bool):
            raise ValueError(f"use_weights must be true or false, got {self.use_weights!r}")



class SRNTTOutput(NamedTuple):
    """Network output; ``[0]`` is the SR image. The swapped maps M and S feed the texture loss."""

    sr: torch.Tensor  # (N, 3, 4H, 4W) in [-1, 1]
    S: torch.Tensor  # (N, 1, H, W) cosine similarity of each LR patch with its match, in [0, 1]
    M_lv3: torch.Tensor  # (N, 256, H, W) swapped relu3_1 of Ref (unweighted)
    M_lv2: torch.Tensor  # (N, 128, 2H, 2W) swapped relu2_1
    M_lv1: torch.Tensor  # (N, 64, 4H, 4W) swapped relu1_1
    index: torch.Tensor  # (N, H, W) matched global patch index into the reference set

    @property
    def textures(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(M_lv3, M_lv2, M_lv1): what the texture loss compares with."""
        return self.M_lv3, self.M_lv2, self.M_lv1


class ContentExtractor(nn.Module):
    """LR image features: conv + LeakyReLU, residual blocks, skip around the blocks."""

    def __init__(self, n_feats: int, n_blocks: int):
        super().__init__()
        self.head = conv3x3(3, n_feats)
        self.blocks = nn.ModuleList(ResBlock(n_feats) for _ in range(n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.head(x), LEAK)
        return run(self.blocks, h) + h


class TransferStage(nn.Module):
    """One scale of texture transfer: fuse features with M, residual blocks, skip, then ×2
    sub-pixel upsampling (the ×4 stage has none; the network's tail follows it)."""

    def __init__(self, n_feats: int, texture_channels: int, n_blocks: int, upsample: bool):
        super().__init__()
        self.head = conv3x3(n_feats + texture_channels, n_feats)
        self.blocks = nn.ModuleList(ResBlock(n_feats) for _ in range(n_blocks))
        self.up = conv3x3(n_feats, n_feats * 4) if upsample else None

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.head(torch.cat((x, m), dim=1)), LEAK)
        h = run(self.blocks, h) + x
        if self.up is None:
            return h
        return F.leaky_relu(F.pixel_shuffle(self.up(h), 2), LEAK)


class SRNTT(RefSRNetwork):
    """The full SRNTT model: frozen VGG19 + matching/swapping + content extractor + texture transfer."""

    texture_loss = "tex"  # Gram matrices of the SR image's VGG features against the swapped maps M
    trainable_extractor = False  # the VGG19 stays as loaded (ImageNet weights)

    TEXTURE_CHANNELS = (256, 128, 64)  # relu3_1, relu2_1, relu1_1

    def __init__(self, config: SRNTTConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or SRNTTConfig(**kwargs)
        cfg = self.config
        nf = cfg.n_feats
        self.content = ContentExtractor(nf, cfg.content_blocks)
        self.stages = nn.ModuleList(
            TransferStage(nf, c, n, upsample=i < 2)
            for i, (c, n) in enumerate(zip(self.TEXTURE_CHANNELS, cfg.transfer_blocks)))
        self.tail1 = conv3x3(nf, nf // 2)
        self.tail2 = conv3x3(nf // 2, 3)
        if cfg.use_weights:  # per scale: M · sigmoid(weight_scale · S + weight_bias)
            self.weight_scale = nn.Parameter(torch.ones(3))
            self.weight_bias = nn.Parameter(torch.ones(3))
        for module in self.modules():  # N(0, 0.02) convolutions, zero biases (paper and port)
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)
        self.vgg = LTE()  # after the init above: keeps its own until load_vgg19
        self.vgg.requires_grad_(False)

    @property
    def texture_extractor(self) -> LTE:
        return self.vgg

    def load_vgg19(self, vgg_state: Mapping[str, torch.Tensor]) -> None:
        """Load the fixed feature extractor from torchvision VGG19 ImageNet weights
        (``features.N.*`` keys, registry name ``"vgg19"``): needed before training from scratch."""
        self.vgg.load_vgg19(dict(vgg_state))
        self.vgg.requires_grad_(False)

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen VGG19 relu1_1, relu2_1, relu3_1 of images in [-1, 1] (no gradients)."""
        return super().extract(x)

    @torch.no_grad()
    def swap(self, query: torch.Tensor, bank: ReferenceBank, search_budget: int | None = None):
        """Match and swap for one sample: ``(S, M_lv3, M_lv2, M_lv1, index)``.

        ``query`` is relu3_1 of LR↑ (256, H, W). j* maximises <P_i(query), P_j(key)/‖P_j(key)‖>;
        S is that best score divided by ‖P_i(query)‖: the cosine similarity, in [0, 1] for ReLU
        features (the same j* maximises it). M takes P_j*(Ref) at each level, overlaps averaged.
        """
        score, index = search(query, bank.keys, normalize_query=False, budget_bytes=self._budget(search_budget))
        # float32: the squared patch energies of relu3_1 overflow float16
        s = (score.float() / patch_norms(F.pad(query.float(), (1, 1, 1, 1)), 3).clamp_min(EPS)).to(query.dtype)
        return (s[None], *self.textures(index, bank), index)

    def textures(self, index: torch.Tensor, bank: ReferenceBank):
        """Swapped maps (M_lv3, M_lv2, M_lv1) for indices (H, W), overlaps averaged."""
        return tuple(transfer(index, values, scale, average_overlaps=True)
                     for values, scale in ((bank.lv3, 1), (bank.lv2, 2), (bank.lv1, 4)))

    def decode(self, lr: torch.Tensor, lr_up: torch.Tensor, S: torch.Tensor, m3, m2, m1) -> torch.Tensor:
        """SR image from the LR batch, S (N, 1, H, W) and the swapped maps (LR↑ is not used)."""
        return self.synthesize(lr, S, m3, m2, m1)

    def synthesize(self, lr: torch.Tensor, S: torch.Tensor, m3: torch.Tensor, m2: torch.Tensor,
                   m1: torch.Tensor) -> torch.Tensor:
        """SR image in [-1, 1] from the LR image and the swapped maps (the trainable network)."""
        x = to_unit(lr)  # the port's [0, 1] convention, so its weights mean the same here
        maps = [m3, m2, m1]
        if self.config.use_weights:
            for i in range(3):
                s = S if i == 0 else F.interpolate(S, scale_factor=2**i, mode="bicubic", align_corners=True)
                maps[i] = maps[i] * torch.sigmoid(s * self.weight_scale[i] + self.weight_bias[i])
        h = self.content(x)
        for stage, m in zip(self.stages, maps):
            h = stage(h, m)
        residual = self.tail2(F.leaky_relu(self.tail1(h), LEAK))
        base = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        return torch.clamp((residual + base) * 2.0 - 1.0, -1.0, 1.0)

    def forward_bank(self, lr: torch.Tensor, lr_up: torch.Tensor, banks: Sequence[ReferenceBank], *,
                     search_budget: int | None = None) -> SRNTTOutput:
        """SR for a batch whose references were encoded with :meth:`encode_references`."""
        if lr.dim() != 4 or lr_up.shape[:2] != lr.shape[:2] or tuple(lr_up.shape[-2:]) != (
                lr.shape[-2] * 4, lr.shape[-1] * 4):
            raise RefSRError(f"SRNTT needs LR (N, 3, H, W) and LR↑ (N, 3, 4H, 4W), got "
                             f"{tuple(lr.shape)} and {tuple(lr_up.shape)}")
        if len(banks) == 1 and lr.shape[0] > 1:
            banks = list(banks) * lr.shape[0]
        if len(banks) != lr.shape[0]:
            raise RefSRError(f"{len(banks)} reference banks for a batch of {lr.shape[0]}")
        query = self.extract(lr_up)[2]
        parts = [self.swap(query[b], banks[b], search_budget) for b in range(lr.shape[0])]
        s, m3, m2, m1, index = (torch.stack(p) for p in zip(*parts))
        sr = self.synthesize(lr, s, m3, m2, m1)
        return SRNTTOutput(sr, s, m3, m2, m1, index)
