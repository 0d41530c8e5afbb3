"""TTSR: Texture Transformer Network for Image Super-Resolution (Yang et al., CVPR 2020).

One file for the whole network, written to match the published model exactly: module and
parameter names follow the reference implementation, so its checkpoints (``MainNet.*`` and
``LTE.*`` keys) load strictly. Scale is fixed at ×4; inputs and output are in [-1, 1].

Pieces:
* :class:`LTE` — learnable texture extractor: VGG19 up to relu3_1 with ImageNet normalisation.
* texture search / transfer (hard and soft attention) — :mod:`napari_refsr.search`, exact
  and memory-bounded, over one or several references.
* :class:`MainNet` — SFE, CSFI2, CSFI3 and MergeTail cross-scale feature integration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import search as ts

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TTSRConfig:
    """Architecture of a TTSR network (defaults: the published model)."""

    n_feats: int = 64
    num_res_blocks: tuple[int, int, int, int] = (16, 16, 8, 4)
    res_scale: float = 1.0
    scale: int = 4
    global_skip: bool = False  # add LR↑ to the output (residual learning); False = published TTSR
    arch: str = field(default="ttsr")

    def __post_init__(self) -> None:
        if isinstance(self.num_res_blocks, str):
            self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks.split("+"))
        self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        if len(self.num_res_blocks) != 4 or min(self.num_res_blocks) < 0:
            raise ValueError(f"num_res_blocks needs four counts >= 0, got {self.num_res_blocks}")
        if self.n_feats < 2 or self.n_feats % 2:
            raise ValueError(f"n_feats must be an even number >= 2, got {self.n_feats}")
        if self.scale != 4:
            raise ValueError("TTSR is defined for ×4 only (scale=4)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_res_blocks"] = list(self.num_res_blocks)
        return d


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=True)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=True)


def up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling as used inside the reference network (no antialias, a=-0.75)."""
    return F.interpolate(x, scale_factor=factor, mode="bicubic")


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = conv3x3(n_feats, n_feats)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))) * self.res_scale + x


def res_blocks(n: int, n_feats: int, res_scale: float) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(n_feats, res_scale) for _ in range(n))


def run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


class MeanShift(nn.Conv2d):
    """Fixed 1×1 conv that maps [0, 1] RGB to ImageNet-normalised values (``LTE.sub_mean``)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():  # values made on the CPU: on the meta device torch.eye costs seconds of imports
            std_t = torch.tensor(std, device="cpu")
            self.weight.copy_(torch.eye(3, device="cpu").view(3, 3, 1, 1) / std_t.view(3, 1, 1, 1))
            self.bias.copy_(-torch.tensor(mean, device="cpu") / std_t)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class LTE(nn.Module):
    """Learnable texture extractor: VGG19 features up to relu1_1 / relu2_1 / relu3_1.

    Layer indices match ``torchvision.models.vgg19().features`` so VGG19 ImageNet weights and
    reference checkpoints load by name. Input in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.slice1 = nn.Sequential()
        self.slice1.add_module("0", nn.Conv2d(3, 64, 3, padding=1))
        self.slice1.add_module("1", nn.ReLU(inplace=True))
        self.slice2 = nn.Sequential()
        for name, module in [("2", nn.Conv2d(64, 64, 3, padding=1)), ("3", nn.ReLU(inplace=True)),
                             ("4", nn.MaxPool2d(2, 2)), ("5", nn.Conv2d(64, 128, 3, padding=1)),
                             ("6", nn.ReLU(inplace=True))]:
            self.slice2.add_module(name, module)
        self.slice3 = nn.Sequential()
        for name, module in [("7", nn.Conv2d(128, 128, 3, padding=1)), ("8", nn.ReLU(inplace=True)),
                             ("9", nn.MaxPool2d(2, 2)), ("10", nn.Conv2d(128, 256, 3, padding=1)),
                             ("11", nn.ReLU(inplace=True))]:
            self.slice3.add_module(name, module)
        self.sub_mean = MeanShift()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lv1 = self.slice1(self.sub_mean(x))
        lv2 = self.slice2(lv1)
        lv3 = self.slice3(lv2)
        return lv1, lv2, lv3

    def load_vgg19(self, vgg_state: dict) -> None:
        """Initialise from torchvision VGG19 weights (``features.N.weight`` keys)."""
        own = {}
        for key in self.state_dict():
            if key.startswith("slice"):
                idx, rest = key.split(".", 2)[1:]
                own[key] = vgg_state[f"features.{idx}.{rest}"]
        self.load_state_dict(own, strict=False)


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


class ReferenceBank(NamedTuple):
    """LTE features of one sample's reference set, computed once and reused for every tile."""

    keys: list[torch.Tensor]  # level-3 features of each Ref↓↑ (C, h, w): what is searched
    lv1: list[torch.Tensor]  # level-1 features of each Ref (64, 4h, 4w): transferred at ×4
    lv2: list[torch.Tensor]  # (128, 2h, 2w)
    lv3: list[torch.Tensor]  # (256, h, w)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Key grid (h, w) of each reference: reference pixels / 4."""
        return [tuple(k.shape[1:]) for k in self.keys]


class TTSROutput(NamedTuple):
    """Network output; a tuple whose first item is the SR image, as the reference returns."""

    sr: torch.Tensor  # (N, 3, 4H, 4W) in [-1, 1]
    S: torch.Tensor  # (N, 1, H, W) soft attention (max relevance)
    T_lv3: torch.Tensor
    T_lv2: torch.Tensor
    T_lv1: torch.Tensor
    index: torch.Tensor  # (N, H, W) hard attention: global patch index into the reference set


class TTSR(nn.Module):
    """The full TTSR model: LTE + texture search/transfer + MainNet."""

    normalize_query = True

    def __init__(self, config: TTSRConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or TTSRConfig(**kwargs)
        cfg = self.config
        self.MainNet = MainNet(cfg.num_res_blocks, cfg.n_feats, cfg.res_scale)
        self.LTE = LTE()
        self.search_budget = ts.DEFAULT_BUDGET
        if cfg.global_skip:  # start exactly at LR↑: the network learns a residual from zero.
            # A random residual at init teaches the first steps to silence it, which they do
            # fastest by killing the ReLU after conv_merge for good (seen with a scaled-down init).
            with torch.no_grad():
                self.MainNet.merge_tail.conv_tail2.weight.zero_()
                self.MainNet.merge_tail.conv_tail2.bias.zero_()

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LTE features of images in [-1, 1] (detached input, as in the reference)."""
        return self.LTE((x.detach() + 1.0) / 2.0)

    def encode_references(
        self, refs: Sequence[torch.Tensor], refs_down_up: Sequence[torch.Tensor]
    ) -> list[ReferenceBank]:
        """Per sample, the features of its references. Each tensor is (N or 1, 3, Hr, Wr)
        with Hr, Wr multiples of 4; a batch of 1 is shared by all samples."""
        n = max(r.shape[0] for r in refs)
        banks = [ReferenceBank([], [], [], []) for _ in range(n)]
        for ref, ref_du in zip(refs, refs_down_up):
            if ref.shape != ref_du.shape or ref.shape[-1] % 4 or ref.shape[-2] % 4:
                raise ValueError(f"reference and its Ref↓↑ must match and be multiples of 4, got "
                                 f"{tuple(ref.shape)} and {tuple(ref_du.shape)}")
            keys = self.extract(ref_du)[2]
            lv1, lv2, lv3 = self.extract(ref)
            for b in range(n):
                i = b if ref.shape[0] > 1 else 0
                banks[b].keys.append(keys[i])
                banks[b].lv1.append(lv1[i])
                banks[b].lv2.append(lv2[i])
                banks[b].lv3.append(lv3[i])
        return banks

    def search_transfer(self, query: torch.Tensor, bank: ReferenceBank):
        """Hard and soft attention for one sample: (S, T_lv3, T_lv2, T_lv1, index)."""
        if torch.is_grad_enabled() and query.requires_grad:
            with torch.no_grad():
                _, index = ts.search(query, bank.keys, normalize_query=self.normalize_query,
                                     budget_bytes=self.search_budget)
            s = ts.relevance(query, bank.keys, index, normalize_query=self.normalize_query)
        else:
            s, index = ts.search(query, bank.keys, normalize_query=self.normalize_query,
                                 budget_bytes=self.search_budget)
        t3 = ts.transfer(index, bank.lv3, 1)
        t2 = ts.transfer(index, bank.lv2, 2)
        t1 = ts.transfer(index, bank.lv1, 4)
        return s[None], t3, t2, t1, index

    def forward_bank(self, lr: torch.Tensor, lr_up: torch.Tensor, banks: Sequence[ReferenceBank]) -> TTSROutput:
        """SR for a batch whose references were encoded with :meth:`encode_references`."""
        query = self.extract(lr_up)[2]
        if len(banks) == 1 and lr.shape[0] > 1:
            banks = list(banks) * lr.shape[0]
        parts = [self.search_transfer(query[b], banks[b]) for b in range(lr.shape[0])]
        s, t3, t2, t1, index = (torch.stack(p) for p in zip(*parts))
        sr = self.MainNet(lr, s, t3, t2, t1, lr_up if self.config.global_skip else None)
        return TTSROutput(sr, s, t3, t2, t1, index)

    def forward(self, lr, lr_up, ref, ref_down_up) -> TTSROutput:
        """The reference's call: four NCHW tensors in [-1, 1] (LR, LR↑, Ref, Ref↓↑).

        ``ref``/``ref_down_up`` may also be lists of tensors: several references per sample,
        whose patches are searched together.
        """
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        refs_du = list(ref_down_up) if isinstance(ref_down_up, (list, tuple)) else [ref_down_up]
        return self.forward_bank(lr, lr_up, self.encode_references(refs, refs_du))
