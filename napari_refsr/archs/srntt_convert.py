"""Converter from the public PyTorch port of SRNTT (S-aiueo32/srntt-pytorch) into our names."""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import WeightsError
from .convert import load_strict, some, strip_prefix
from .guard import expected_shapes
from .srntt import SRNTT, SRNTTConfig
from .vgg import LTE

__all__ = ["convert_srntt_pytorch"]

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
    state = strip_prefix(state_dict)
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
        raise WeightsError(f"not an srntt-pytorch checkpoint: unrecognised keys {some(unknown)}")
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
    load_strict(SRNTT(config), out, f"srntt-pytorch weights do not fit SRNTT {config.to_dict()}")
    return out, config.to_dict()
