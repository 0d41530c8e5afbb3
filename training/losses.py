"""Training objectives: L1, VGG19 perceptual, TTSR's transferal perceptual loss, SRNTT's texture
loss and WGAN-GP.

TTSR behaviour follows the reference code (researchmm/TTSR ``loss/``): perceptual MSE on VGG19
relu5_1 of images in [0, 1] (ImageNet-normalised), the transferal perceptual loss as the mean
over the three LTE levels of MSE(LTE(SR), T) through a frozen copy of the LTE synced from the
trained one, and WGAN-GP with the reference discriminator, gradient-penalty weight 10 and k = 2
discriminator steps per generator step (Adam betas (0, 0.9)). SRNTT (Zhang et al., CVPR 2019)
shares L1, the perceptual loss and WGAN-GP and adds :class:`TextureLoss`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_refsr import weights
from napari_refsr.archs.blocks import conv3x3, to_unit
from napari_refsr.archs.vgg import VGG19Features
from napari_refsr.errors import RefSRError

__all__ = ["load_vgg19_state", "PerceptualLoss", "TransferalPerceptualLoss",
           "gram_matrix", "TextureLoss", "Discriminator", "WGANGP", "reconstruction_loss"]

def reconstruction_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L1 (the reference's ``rec`` loss) or MSE (``kind="l2"``) between the SR and HR images.

    MSE weighs large errors (edges) more, which a network learning a residual from zero picks up
    far sooner than from L1's sign-only gradient (``loss.rec_type``)."""
    if kind == "l2":
        return F.mse_loss(sr, hr)
    if kind != "l1":
        raise ValueError(f"reconstruction loss kind must be l1 or l2, got {kind!r}")
    return F.l1_loss(sr, hr)


def load_vgg19_state(source: str | Path | None, *, progress: bool = True) -> dict[str, torch.Tensor] | None:
    """torchvision VGG19 state dict from a registry name (``"vgg19"``) or a file; None → None."""
    if source is None or source == "":
        return None
    path = weights.resolve(source, progress=progress, what="VGG19 weights (model.vgg_weights)")
    state = weights.load_state_dict_file(path)
    if not any(k.startswith("features.") for k in state):
        raise RefSRError(f"{path} does not look like torchvision VGG19 weights (no 'features.*' keys)")
    return state


class PerceptualLoss(nn.Module):
    """MSE between VGG19 relu5_1 features of SR and HR (images in [-1, 1])."""

    def __init__(self, vgg: VGG19Features):
        super().__init__()
        self.vgg = vgg

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        sr_feat = self.vgg(to_unit(sr))
        with torch.no_grad():
            hr_feat = self.vgg(to_unit(hr.detach()))
        return F.mse_loss(sr_feat.float(), hr_feat.float())


class TransferalPerceptualLoss(nn.Module):
    """Mean over levels 3/2/1 of the distance between LTE(SR) and the transferred textures T.

    LTE(SR) comes from a frozen copy of the trained LTE, re-synced before every use, so the loss
    pulls SR towards T without changing the extractor through this path (the reference's
    ``LTE_copy``). ``use_S`` weights both sides by sigmoid(S) at each level.
    """

    def __init__(self, lte: nn.Module, *, use_S: bool = False, kind: str = "l2"):
        super().__init__()
        self.lte_copy = copy.deepcopy(lte).requires_grad_(False)
        self.use_S = use_S
        self.dist = F.mse_loss if kind == "l2" else F.l1_loss

    def forward(self, lte: nn.Module, sr, S, T_lv3, T_lv2, T_lv1) -> torch.Tensor:
        self.lte_copy.load_state_dict(lte.state_dict())
        lv1, lv2, lv3 = self.lte_copy(to_unit(sr))
        if self.use_S:
            h, w = S.shape[-2:]
            s3 = torch.sigmoid(S)
            s2 = torch.sigmoid(F.interpolate(S, size=(2 * h, 2 * w), mode="bicubic"))
            s1 = torch.sigmoid(F.interpolate(S, size=(4 * h, 4 * w), mode="bicubic"))
        else:
            s3 = s2 = s1 = 1.0
        total = sum(self.dist((a * s).float(), (t * s).float())
                    for a, t, s in ((lv3, T_lv3, s3), (lv2, T_lv2, s2), (lv1, T_lv1, s1)))
        return total / 3.0


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features → (N, C, C) Gram matrices Σ_p F_c(p)·F_d(p), in float32."""
    f = x.float().flatten(2)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.bmm(f, f.transpose(1, 2))


class TextureLoss(nn.Module):
    """SRNTT's texture loss: the SR image's VGG19 relu3_1 / relu2_1 / relu1_1 textures against the
    swapped maps M_lv3 / M_lv2 / M_lv1, compared as Gram matrices (the paper's L_tex).

    Per layer l (C_l channels, H_l×W_l positions), with both sides weighted by
    w_l = sigmoid(a · S_l + b) when ``use_S`` (S bicubic-upsampled to the layer, as the network
    does; a = −20, b = 0.65 as in the authors' code and the public port)::

        L_l = mean over the C_l×C_l entries of (Gr(φ_l(SR)·w_l) − Gr(M_l·w_l))² / (4·(C_l·H_l·W_l)²)

    the normalisation of the authors' code (``/4/(input_size² · 256)²`` at relu3_1, ×512 at
    relu2_1, ×1024 at relu1_1 = C_l·H_l·W_l), averaged over the three layers. ``extractor`` is the
    network's own frozen VGG (the one M comes from), called with gradients so they reach SR only.
    """

    def __init__(self, *, use_S: bool = True, weight_scale: float = -20.0, weight_bias: float = 0.65):
        super().__init__()
        self.use_S, self.a, self.b = bool(use_S), float(weight_scale), float(weight_bias)

    def forward(self, extractor: nn.Module, sr: torch.Tensor, S: torch.Tensor, M_lv3: torch.Tensor,
                M_lv2: torch.Tensor, M_lv1: torch.Tensor) -> torch.Tensor:
        lv1, lv2, lv3 = extractor(to_unit(sr))
        total = sr.new_zeros((), dtype=torch.float32)
        for i, (feat, m) in enumerate(((lv3, M_lv3), (lv2, M_lv2), (lv1, M_lv1))):
            if feat.shape != m.shape:
                raise RefSRError(f"texture loss: SR features {tuple(feat.shape)} and swapped map {tuple(m.shape)} "
                                 "differ in shape")
            feat, m = feat.float(), m.detach().float()
            if self.use_S:
                s = S.detach().float()
                if i:
                    s = F.interpolate(s, scale_factor=2**i, mode="bicubic", align_corners=True)
                w = torch.sigmoid(self.a * s + self.b)
                feat, m = feat * w, m * w
            c, h, w_ = feat.shape[1:]
            size = float(c * h * w_)
            # normalise before squaring: the same value, without float32 overflow for big crops
            diff = (gram_matrix(feat) - gram_matrix(m)) / size
            total = total + diff.pow(2).mean() / 4.0
        return total / 3.0


class Discriminator(nn.Module):
    """The reference discriminator: 10 3×3 convs (32→512, stride 2 every other) with
    LeakyReLU 0.2, then fc 512·(size/32)² → 1024 → 1. ``size`` is the HR crop (multiple of 32)."""

    def __init__(self, size: int = 160):
        super().__init__()
        if size % 32:
            raise RefSRError(f"the discriminator needs an input size that is a multiple of 32, got {size}")
        self.size = size
        layers: list[nn.Module] = []
        cin = 3
        for cout in (32, 64, 128, 256, 512):
            layers += [conv3x3(cin, cout), nn.LeakyReLU(0.2), conv3x3(cout, cout, 2), nn.LeakyReLU(0.2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear((size // 32) ** 2 * 512, 1024)
        self.fc2 = nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(x), 0.2))


class WGANGP:
    """WGAN-GP training of the discriminator and the generator's adversarial loss.

    :meth:`discriminator_steps` runs ``k`` critic updates on detached SR (fake) vs HR (real),
    each with the gradient penalty ``gp · (‖∇D(x̂)‖₂ − 1)²`` on random interpolates, in fp32.
    ``reduce_grads`` (e.g. an all-reduce across processes) runs between backward and step.
    :meth:`generator_loss` is ``−mean D(SR)`` with the critic frozen.
    """

    def __init__(self, discriminator: Discriminator, optimizer: torch.optim.Optimizer, *, k: int = 2,
                 gp: float = 10.0, reduce_grads=None):
        self.D, self.optimizer, self.k, self.gp = discriminator, optimizer, int(k), float(gp)
        self.reduce_grads = reduce_grads

    def discriminator_steps(self, fake: torch.Tensor, real: torch.Tensor) -> float:
        fake, real = fake.detach().float(), real.detach().float()
        self.D.requires_grad_(True)
        loss_value = 0.0
        for _ in range(self.k):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.D(fake).mean() - self.D(real).mean()
            eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
            hat = (fake * (1 - eps) + real * eps).requires_grad_(True)
            grad = torch.autograd.grad(self.D(hat).sum(), hat, create_graph=True)[0]
            penalty = (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
            loss = loss + self.gp * penalty
            loss.backward()
            if self.reduce_grads is not None:
                self.reduce_grads(self.D)
            self.optimizer.step()
            loss_value = float(loss.detach())
        self.D.requires_grad_(False)
        return loss_value

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -self.D(fake.float()).mean()
