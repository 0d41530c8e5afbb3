"""TorchScript of a RefSR network behind the two-input interface (bioimage.io ``torchscript``).

Consumers without Python (deepImageJ, Icy, anything on the Java/C++ runtimes) run only TorchScript.
A plain trace of :class:`~.two_input.TwoInputSR` holds for one image size: the PIL-exact bicubic
computes its filter taps, and the texture search its chunking, in Python from the sizes, and a
trace freezes them. So the export splits the network:

* the size-independent convolutional parts — the texture extractor (VGG19 slices) and the head
  that turns the LR image and the transferred textures into the SR image (TTSR's ``MainNet``,
  SRNTT's ``synthesize``) — are *traced*, once, with the network's own code;
* what depends on the sizes is *scripted* from the TorchScript-compatible functions below: the
  bicubic taps (PIL's formula, float64, as :mod:`napari_refsr.resize`), the texture search
  (cosine or key-normalised relevance of zero-padded 3×3 patches, streamed over query chunks with a
  running max, lowest index on ties — the dense formulation :mod:`napari_refsr.search` computes
  without ever holding it) and the transfer (unfold → gather → fold), and the per-sample glue of
  the networks' ``forward`` (one reference per sample).

These functions restate, in TorchScript's subset (no keyword-only arguments, no numpy, no
callbacks), what the eager modules compute; tests check that the scripted module gives the eager
network's output at several sizes and batch sizes, for both architectures.
"""

from __future__ import annotations

import math
import warnings
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["script_two_input"]

EPS = 1e-12  # napari_refsr.search.EPS
QUERY_CHUNK = 4096  # query patches per matrix product: scratch ∝ chunk × reference patches


def _cubic(x: torch.Tensor) -> torch.Tensor:
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _taps(n_in: int, n_out: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """PIL's bicubic filter taps for one axis: (n_out, k) source indices and weights (float64)."""
    scale = float(n_in) / float(n_out)
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    k = int(math.ceil(support)) * 2 + 1
    center = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0.0).to(torch.int64)
    xmax = torch.trunc(center + support + 0.5).to(torch.int64).clamp(max=n_in)
    idx = xmin[:, None] + torch.arange(k, dtype=torch.int64)[None, :]
    valid = (idx < xmax[:, None]).to(torch.float64)
    w = _cubic((idx.to(torch.float64) - center[:, None] + 0.5) / filterscale) * valid
    total = w.sum(dim=1, keepdim=True)
    w = torch.where(total != 0.0, w / torch.where(total != 0.0, total, torch.ones_like(total)), torch.zeros_like(w))
    return idx.clamp(max=n_in - 1), w


def _resize_axis(x: torch.Tensor, n_out: int, dim: int) -> torch.Tensor:
    n_in = x.shape[dim]
    if n_in == n_out:
        return x
    idx, w = _taps(n_in, n_out)
    idx = idx.to(x.device)
    w = w.to(device=x.device, dtype=x.dtype)
    shape = [1] * x.dim()
    shape[dim] = n_out
    out = x.index_select(dim, idx[:, 0]) * w[:, 0].view(shape)
    for t in range(1, idx.shape[1]):
        out = out + x.index_select(dim, idx[:, t]) * w[:, t].view(shape)
    return out


def resize_bicubic(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The last two axes resized like PIL's BICUBIC (float images)."""
    return _resize_axis(_resize_axis(x, width, x.dim() - 1), height, x.dim() - 2)


def down_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    return resize_bicubic(resize_bicubic(x, max(1, h // factor), max(1, w // factor)), h, w)


def _unit_cols(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, 2.0, [0], True).clamp_min(eps)


def search(query: torch.Tensor, key: torch.Tensor, normalize_query: bool,
           chunk: int = QUERY_CHUNK) -> Tuple[torch.Tensor, torch.Tensor]:
    """Best key patch per query patch of (C, H, W) maps: (S, index), both (H, W)."""
    h, w = query.shape[1], query.shape[2]
    q = F.unfold(query[None], 3, padding=1)[0]  # (C·9, H·W), F.unfold order
    k = _unit_cols(F.unfold(key[None], 3, padding=1)[0])
    if normalize_query:
        q = _unit_cols(q)
    kt = k.t()
    n = q.shape[1]
    best = torch.empty(n, dtype=query.dtype, device=query.device)
    index = torch.empty(n, dtype=torch.int64, device=query.device)
    for q0 in range(0, n, chunk):
        q1 = min(n, q0 + chunk)
        val, arg = (kt @ q[:, q0:q1]).max(dim=0)
        best[q0:q1] = val
        index[q0:q1] = arg
    return best.view(h, w), index.view(h, w)


def transfer(index: torch.Tensor, value: torch.Tensor, scale: int, average_overlaps: bool) -> torch.Tensor:
    """Texture map (C, H·scale, W·scale) of ``index`` (H, W) from one reference's value map."""
    h, w = index.shape[0], index.shape[1]
    k = 3 * scale
    cols = F.unfold(value[None], k, padding=scale, stride=scale)[0]
    out = F.fold(cols.index_select(1, index.reshape(-1))[None], (h * scale, w * scale), k,
                 padding=scale, stride=scale)[0]
    if not average_overlaps:
        return out / 9.0
    ones = torch.ones(1, k * k, h * w, dtype=value.dtype, device=value.device)  # one per patch and pixel
    count = F.fold(ones, (h * scale, w * scale), k, padding=scale, stride=scale)[0]
    return out / count


def _patch_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of the zero-padded 3×3 patch around every position of a (C, H, W) map (SRNTT's S)."""
    energy = F.avg_pool2d(x.pow(2).sum(0, keepdim=True)[None], 3, stride=1, padding=1,
                          count_include_pad=True)[0, 0] * 9.0
    return energy.clamp_min(0).sqrt()


class _Head(nn.Module):
    """The network after the texture transfer — TTSR's ``MainNet`` (with LR↑ as skip when the
    config has ``global_skip``), SRNTT's ``synthesize`` — with one signature, for tracing."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, lr, s, t3, t2, t1, lr_up):
        if self.network.config.arch == "srntt":
            return self.network.synthesize(lr, s, t3, t2, t1)
        return self.network.MainNet(lr, s, t3, t2, t1, lr_up if self.network.config.global_skip else None)


class ScriptedTwoInputSR(nn.Module):
    """``(lr, reference)`` in [0, 1] → ×4 in [0, 1], as :class:`~.two_input.TwoInputSR`, from
    traced ``extractor`` and ``head`` modules; scriptable as a whole."""

    def __init__(self, extractor: nn.Module, head: nn.Module, channels: int, srntt: bool):
        super().__init__()
        self.extractor = extractor
        self.head = head
        self.channels = channels
        self.srntt = srntt
        self.eps = EPS

    def forward(self, lr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or reference.dim() != 4 or lr.shape[1] != self.channels \
                or reference.shape[1] != self.channels:
            raise ValueError("expected (N, C, H, W) inputs with the model's channels")
        h4, w4 = (reference.shape[2] // 4) * 4, (reference.shape[3] // 4) * 4
        lr = lr.float().expand(-1, 3, -1, -1) * 2.0 - 1.0
        ref = reference[:, :, :h4, :w4].float().expand(-1, 3, -1, -1) * 2.0 - 1.0
        lr_up = resize_bicubic(lr, lr.shape[2] * 4, lr.shape[3] * 4)
        query = self.extractor((lr_up + 1.0) / 2.0)[2]
        keys = self.extractor((down_up(ref, 4) + 1.0) / 2.0)[2]
        lv1, lv2, lv3 = self.extractor((ref + 1.0) / 2.0)
        s_all: List[torch.Tensor] = []
        t3_all: List[torch.Tensor] = []
        t2_all: List[torch.Tensor] = []
        t1_all: List[torch.Tensor] = []
        for b in range(lr.shape[0]):
            i = b if ref.shape[0] > 1 else 0
            s, index = search(query[b], keys[i], not self.srntt)
            if self.srntt:
                s = (s.float() / _patch_norms(query[b].float()).clamp_min(self.eps)).to(query.dtype)
            s_all.append(s[None])
            t3_all.append(transfer(index, lv3[i], 1, self.srntt))
            t2_all.append(transfer(index, lv2[i], 2, self.srntt))
            t1_all.append(transfer(index, lv1[i], 4, self.srntt))
        sr = self.head(lr, torch.stack(s_all), torch.stack(t3_all), torch.stack(t2_all), torch.stack(t1_all), lr_up)
        out = (sr + 1.0) / 2.0
        return out.mean(dim=1, keepdim=True) if self.channels == 1 else out


def script_two_input(network: nn.Module, channels: int = 3) -> torch.jit.ScriptModule:
    """The TorchScript module of ``network`` (TTSR or SRNTT, eval mode, CPU, float32): inputs
    ``(lr (N, C, h, w), reference (N, C, H, W))`` in [0, 1], any sizes, ``C`` = ``channels``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    network = network.eval().float().cpu()
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    s = torch.rand(1, 1, 8, 8, generator=g)
    textures = [torch.rand(1, c, 8 * f, 8 * f, generator=g) for c, f in ((256, 1), (128, 2), (64, 4))]
    lr_up = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.9+ marks TorchScript deprecated in favour of torch.export, which the Java/C++
        # consumers of bioimage.io packages do not read; TorchScript is what they run
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        extractor = torch.jit.trace(network.texture_extractor, torch.rand(1, 3, 32, 32, generator=g))
        head = torch.jit.trace(_Head(network), (lr, s, *textures, lr_up))
        return torch.jit.script(ScriptedTwoInputSR(extractor, head, channels, network.config.arch == "srntt"))
