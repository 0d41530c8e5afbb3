"""SRNTT: Image Super-Resolution by Neural Texture Transfer (Zhang et al., CVPR 2019).

TTSR's ancestor. Textures are matched and swapped in a *fixed* VGG19 feature space, then fused
with the LR content by a residual network at ×1, ×2 and ×4. Scale ×4; inputs and output in
[-1, 1], like :class:`~napari_refsr.archs.ttsr.TTSR`, whose interface this network offers too
(``encode_references``, ``forward_bank``, ``forward``, ``extract``, ``search_budget``), so the
pipeline, the CLI and the front ends run either network.

Pieces:
* feature extractor — VGG19 up to relu3_1 (:class:`~napari_refsr.archs.ttsr.LTE`'s layers and
  ImageNet normalisation), frozen: ImageNet weights, never trained.
* matching — every 3×3 relu3_1 patch of LR↑ against every patch of Ref↓↑, inner product with the
  *reference* patch normalised: ``search(..., normalize_query=False)`` of :mod:`napari_refsr.search`.
* swapping — the matched patches of the *original* Ref's relu3_1 / relu2_1 / relu1_1 (3/6/12
  wide, stride 1/2/4), averaged where they overlap: ``transfer(..., average_overlaps=True)``.
* :class:`ContentExtractor` and three :class:`TransferStage` s with a global bilinear skip.

Layer layout follows the public PyTorch port (S-aiueo32/srntt-pytorch: no batch norm,
LeakyReLU(0.1), sub-pixel ×2, similarity weighting ``M · sigmoid(a·S + b)`` per scale, a bilinear
×4 skip, images in [0, 1] inside); :func:`convert_srntt_pytorch` maps its checkpoints. The
network works in [0, 1] internally and returns ``clamp(2·sr − 1, −1, 1)`` (clamp, not tanh).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import search as ts
from ..errors import RefSRError, WeightsError
from .guard import expected_shapes
from .ttsr import LTE, TTSR, ReferenceBank, ResBlock, conv3x3, run

__all__ = ["SRNTTConfig", "SRNTT", "SRNTTOutput", "convert_srntt_pytorch", "convert_srntt_pytorch_file"]

LEAK = 0.1  # LeakyReLU slope of the heads and sub-pixel layers


@dataclass
class SRNTTConfig:
    """Architecture of an SRNTT network (defaults: the paper's sizes as in the public port)."""

    n_feats: int = 64
    content_blocks: int = 16  # residual blocks of the content extractor
    transfer_blocks: tuple[int, int, int] = (16, 16, 16)  # per texture-transfer scale ×1, ×2, ×4
    use_weights: bool = True  # similarity weighting of the swapped maps M
    scale: int = 4
    arch: str = field(default="srntt")

    def __post_init__(self) -> None:
        if isinstance(self.transfer_blocks, str):
            self.transfer_blocks = tuple(int(n) for n in self.transfer_blocks.split("+"))
        if isinstance(self.transfer_blocks, int):
            self.transfer_blocks = (self.transfer_blocks,) * 3
        self.transfer_blocks = tuple(int(n) for n in self.transfer_blocks)
        if len(self.transfer_blocks) != 3 or min(self.transfer_blocks) < 0:
            raise ValueError(f"transfer_blocks needs three counts >= 0, got {self.transfer_blocks}")
        if int(self.content_blocks) < 0:
            raise ValueError(f"content_blocks must be >= 0, got {self.content_blocks}")
        self.content_blocks = int(self.content_blocks)
        if self.n_feats < 2 or self.n_feats % 2:
            raise ValueError(f"n_feats must be an even number >= 2, got {self.n_feats}")
        if self.scale != 4:
            raise ValueError("SRNTT is defined for ×4 only (scale=4)")
        if not isinstance(self.use_weights, bool):
            raise ValueError(f"use_weights must be true or false, got {self.use_weights!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["transfer_blocks"] = list(self.transfer_blocks)
        return d


class SRNTTOutput(NamedTuple):
    """Network output; ``[0]`` is the SR image. The swapped maps M and S feed the texture loss."""

    sr: torch.Tensor  # (N, 3, 4H, 4W) in [-1, 1]
    S: torch.Tensor  # (N, 1, H, W) cosine similarity of each LR patch with its match, in [0, 1]
    M_lv3: torch.Tensor  # (N, 256, H, W) swapped relu3_1 of Ref (unweighted)
    M_lv2: torch.Tensor  # (N, 128, 2H, 2W) swapped relu2_1
    M_lv1: torch.Tensor  # (N, 64, 4H, 4W) swapped relu1_1
    index: torch.Tensor  # (N, H, W) matched global patch index into the reference set


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


def _patch_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of the zero-padded 3×3 patch around every position of a (C, H, W) map."""
    energy = F.avg_pool2d(x.pow(2).sum(0, keepdim=True)[None], 3, stride=1, padding=1,
                          count_include_pad=True)[0, 0] * 9.0
    return energy.clamp_min(0).sqrt()


class SRNTT(nn.Module):
    """The full SRNTT model: frozen VGG19 + matching/swapping + content extractor + texture transfer."""

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
        self.search_budget = ts.DEFAULT_BUDGET

    def load_vgg19(self, vgg_state: Mapping[str, torch.Tensor]) -> None:
        """Load the fixed feature extractor from torchvision VGG19 ImageNet weights
        (``features.N.*`` keys, registry name ``"vgg19"``): needed before training from scratch."""
        self.vgg.load_vgg19(dict(vgg_state))
        self.vgg.requires_grad_(False)

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen VGG19 relu1_1, relu2_1, relu3_1 of images in [-1, 1] (no gradients)."""
        return self.vgg((x.detach() + 1.0) / 2.0)

    # same encoding as TTSR: keys = relu3_1 of Ref↓↑, values = the three levels of the original Ref
    encode_references = TTSR.encode_references

    @torch.no_grad()
    def swap(self, query: torch.Tensor, bank: ReferenceBank):
        """Match and swap for one sample: ``(S, M_lv3, M_lv2, M_lv1, index)``.

        ``query`` is relu3_1 of LR↑ (256, H, W). j* maximises <P_i(query), P_j(key)/‖P_j(key)‖>;
        S is that best score divided by ‖P_i(query)‖: the cosine similarity, in [0, 1] for ReLU
        features (the same j* maximises it). M takes P_j*(Ref) at each level, overlaps averaged.
        """
        score, index = ts.search(query, bank.keys, normalize_query=False, budget_bytes=self.search_budget)
        # float32: the squared patch energies of relu3_1 overflow float16
        s = (score.float() / _patch_norms(query.float()).clamp_min(ts.EPS)).to(query.dtype)
        m3 = ts.transfer(index, bank.lv3, 1, average_overlaps=True)
        m2 = ts.transfer(index, bank.lv2, 2, average_overlaps=True)
        m1 = ts.transfer(index, bank.lv1, 4, average_overlaps=True)
        return s[None], m3, m2, m1, index

    def synthesize(self, lr: torch.Tensor, S: torch.Tensor, m3: torch.Tensor, m2: torch.Tensor,
                   m1: torch.Tensor) -> torch.Tensor:
        """SR image in [-1, 1] from the LR image and the swapped maps (the trainable network)."""
        x = (lr + 1.0) / 2.0  # the port's [0, 1] convention, so its weights mean the same here
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

    def forward_bank(self, lr: torch.Tensor, lr_up: torch.Tensor, banks: Sequence[ReferenceBank]) -> SRNTTOutput:
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
        parts = [self.swap(query[b], banks[b]) for b in range(lr.shape[0])]
        s, m3, m2, m1, index = (torch.stack(p) for p in zip(*parts))
        sr = self.synthesize(lr, s, m3, m2, m1)
        return SRNTTOutput(sr, s, m3, m2, m1, index)

    # the reference-style call (lr, lr_up, ref, ref_down_up), one or several references per sample
    forward = TTSR.forward


# --------------------------------------------------------------------------- public port checkpoints

_SCALE = {"small": 0, "medium": 1, "large": 2}
_CONV = {"0": "conv1", "2": "conv2"}  # the port's ResBlock: body.0 conv, body.1 ReLU, body.2 conv


def _port_key(key: str) -> str | None:
    """Our name for a key of the port's ``SRNTT``; None for a dropped one; KeyError if unknown."""
    if m := re.fullmatch(r"content_extractor\.head\.0\.(weight|bias)", key):
        return f"content.head.{m[1]}"
    if m := re.fullmatch(r"content_extractor\.body\.(\d+)\.body\.([02])\.(weight|bias)", key):
        return f"content.blocks.{m[1]}.{_CONV[m[2]]}.{m[3]}"
    if re.fullmatch(r"content_extractor\.tail\.\d+\.(weight|bias)", key):
        return None  # the plain (texture-free) SR branch, used only to pre-train the extractor
    if m := re.fullmatch(r"texture_transfer\.head_(small|medium|large)\.0\.(weight|bias)", key):
        return f"stages.{_SCALE[m[1]]}.head.{m[2]}"
    if m := re.fullmatch(r"texture_transfer\.body_(small|medium|large)\.(\d+)\.body\.([02])\.(weight|bias)", key):
        return f"stages.{_SCALE[m[1]]}.blocks.{m[2]}.{_CONV[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"texture_transfer\.tail_(small|medium)\.0\.(weight|bias)", key):
        return f"stages.{_SCALE[m[1]]}.up.{m[2]}"
    if m := re.fullmatch(r"texture_transfer\.tail_large\.([02])\.(weight|bias)", key):
        return f"tail{1 if m[1] == '0' else 2}.{m[2]}"
    if key == "texture_transfer.a":
        return "weight_scale"
    if key == "texture_transfer.b":
        return "weight_bias"
    raise KeyError(key)


def convert_srntt_pytorch(
    state_dict: Mapping[str, torch.Tensor], vgg_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict]:
    """A state dict of the public PyTorch port (``SRNTT(ngf, n_blocks, use_weights)``'s
    ``content_extractor.*`` / ``texture_transfer.*``) → ``(our state dict, config dict)``.

    The port keeps no VGG weights (it loads torchvision's ImageNet VGG19 at run time), so
    ``vgg_state`` is that torchvision VGG19 state dict. The port's plain-SR branch
    (``content_extractor.tail``) is not part of the texture-transfer output and is dropped.
    Raises :class:`WeightsError` for keys or shapes that do not fit.
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        try:
            new = _port_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is not None:
            out[new] = value
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else "")
        raise WeightsError(f"not an srntt-pytorch checkpoint: unrecognised keys {shown}")
    head = out.get("content.head.weight")
    if head is None or head.ndim != 4:
        raise WeightsError("srntt-pytorch checkpoint lacks content_extractor.head.0.weight")

    def count(prefix: str) -> int:
        found = [int(k[len(prefix):].split(".", 1)[0]) for k in out if k.startswith(prefix)]
        return max(found) + 1 if found else 0

    try:
        config = SRNTTConfig(n_feats=int(head.shape[0]), content_blocks=count("content.blocks."),
                             transfer_blocks=tuple(count(f"stages.{i}.blocks.") for i in range(3)),
                             use_weights="weight_scale" in out)
    except ValueError as exc:
        raise WeightsError(f"srntt-pytorch checkpoint with an impossible shape ({exc})") from None
    vgg = LTE()
    try:
        vgg.load_vgg19(dict(vgg_state))
    except (KeyError, RuntimeError) as exc:
        raise WeightsError(f"the VGG19 weights are not a torchvision VGG19 state dict ({exc})") from None
    out.update({f"vgg.{k}": v for k, v in vgg.state_dict().items()})
    expected_shapes(SRNTTConfig, SRNTT, config.to_dict())  # bounds and size before allocating
    net = SRNTT(config)
    try:
        net.load_state_dict(out, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:3])
        raise WeightsError(f"srntt-pytorch weights do not fit SRNTT {config.to_dict()}: {detail[:300]}") from None
    return out, config.to_dict()


def convert_srntt_pytorch_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    vgg: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Convert a port checkpoint (``netG_*.pth``) into our export at ``dst`` (``.pt`` or
    ``.safetensors``), loadable with ``load_model(dst)``. ``vgg`` is a torchvision VGG19 file;
    None fetches the registry's ``"vgg19"`` (hash-checked)."""
    from .. import weights

    state = weights.load_state_dict_file(src)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    vgg_path = Path(vgg) if vgg is not None else weights.fetch("vgg19", cache_dir=cache_dir, progress=progress)
    try:
        sd, config = convert_srntt_pytorch(state, weights.load_state_dict_file(vgg_path))
    except WeightsError as err:
        raise WeightsError(f"{src}: {err}") from None
    meta = {"source": "github.com/S-aiueo32/srntt-pytorch", "converted_from": Path(src).name}
    return weights.save_checkpoint(dst, sd, config, meta)
