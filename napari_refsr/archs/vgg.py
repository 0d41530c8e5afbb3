"""VGG19 (torchvision layer indices, so ``features.N.*`` ImageNet weights load by name without
torchvision): one layer builder for the texture extractor of the networks (relu1_1, relu2_1,
relu3_1) and for the perceptual loss of training (up to relu5_1)."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ..errors import RefSRError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's vgg19().features configuration, up to relu5_1 (index 29)
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]
RELU = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu5_1": 29}  # layer index of each output


def vgg19_layers(last: int) -> list[tuple[str, nn.Module]]:
    """torchvision ``vgg19().features`` layers 0..``last`` as (index name, module) pairs."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG19_CFG:
        if len(layers) > last:  # build no more than asked: the random init draws stay the same
            break
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return [(str(i), m) for i, m in enumerate(layers[: last + 1])]


def vgg19_weight_names(last: int) -> list[str]:
    """torchvision state-dict keys (``features.N.weight/bias``) of the layers up to ``last``."""
    return [f"features.{name}.{p}" for name, m in vgg19_layers(last) if isinstance(m, nn.Conv2d)
            for p in ("weight", "bias")]


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
    """Texture extractor: VGG19 features up to relu1_1 / relu2_1 / relu3_1 of images in [0, 1].

    TTSR's learnable texture extractor (``LTE.*``) and SRNTT's frozen one (``vgg.*``). Layer
    names match ``torchvision.models.vgg19().features`` so VGG19 ImageNet weights and reference
    checkpoints load by name.
    """

    def __init__(self) -> None:
        super().__init__()
        layers = vgg19_layers(RELU["relu3_1"])
        bounds = (0, RELU["relu1_1"] + 1, RELU["relu2_1"] + 1, RELU["relu3_1"] + 1)
        for i, name in enumerate(("slice1", "slice2", "slice3")):
            part = nn.Sequential()
            for idx, module in layers[bounds[i] : bounds[i + 1]]:
                part.add_module(idx, module)
            setattr(self, name, part)
        self.sub_mean = MeanShift()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lv1 = self.slice1(self.sub_mean(x))
        lv2 = self.slice2(lv1)
        lv3 = self.slice3(lv2)
        return lv1, lv2, lv3

    def load_vgg19(self, vgg_state: Mapping[str, torch.Tensor]) -> None:
        """Initialise from torchvision VGG19 weights (``features.N.weight`` keys)."""
        own = {}
        for key in self.state_dict():
            if key.startswith("slice"):
                idx, rest = key.split(".", 2)[1:]
                own[key] = vgg_state[f"features.{idx}.{rest}"]
        self.load_state_dict(own, strict=False)


class VGG19Features(nn.Module):
    """VGG19 up to relu5_1 (torchvision layer indices 0..29), frozen; input RGB in [0, 1].

    ``state=None`` keeps the random initialisation (tests only: a loss on it is meaningless).
    """

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        if state is not None:
            missing = [k for k in self.weight_names() if k not in state]
            if missing:
                raise RefSRError(f"VGG19 weights lack {len(missing)} tensor(s) up to relu5_1, e.g. {missing[0]}")
        self.features = nn.Sequential(*(m for _, m in vgg19_layers(RELU["relu5_1"])))  # 30 modules
        self.sub_mean = MeanShift(IMAGENET_MEAN, IMAGENET_STD)
        if state is not None:
            self.features.load_state_dict({k[len("features."):]: state[k] for k in self.weight_names()})
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def weight_names() -> list[str]:
        """torchvision state-dict keys of the layers up to relu5_1 (``features.N.weight/bias``)."""
        return vgg19_weight_names(RELU["relu5_1"])

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # always a fixed feature extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.sub_mean(x))
