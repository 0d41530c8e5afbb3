"""Converters into TTSR's names (ours, the reference implementation's ``MainNet.*`` / ``LTE.*``):
the reference release (a flat state dict) and OpenMMLab (mmediting / mmagic) ``.pth`` files, and the
architecture config read off a state dict's shapes."""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import WeightsError
from .convert import ForeignFormat, some, strip_prefix
from .ttsr import TTSRConfig

__all__ = ["infer_ttsr_config", "convert_mmagic", "convert_reference", "FOREIGN_FORMATS"]

_BLOCK_RE = re.compile(r"^MainNet\.(SFE\.RBs|RB11|RB21|RB22|RB31|RB32|RB33)\.(\d+)\.")


def infer_ttsr_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """TTSR config (n_feats, num_res_blocks) from a reference-named state dict's shapes."""
    head = state_dict.get("MainNet.SFE.conv_head.weight")
    if head is None or head.ndim != 4:
        raise WeightsError("TTSR weights lack MainNet.SFE.conv_head.weight (incomplete checkpoint)")
    counts: dict[str, int] = {}
    for key in state_dict:
        m = _BLOCK_RE.match(key)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)) + 1)
    blocks = (counts.get("SFE.RBs", 0), counts.get("RB11", 0), counts.get("RB21", 0), counts.get("RB31", 0))
    try:
        return TTSRConfig(n_feats=int(head.shape[0]), num_res_blocks=blocks).to_dict()
    except ValueError as exc:
        raise WeightsError(f"TTSR weights with an impossible shape ({exc})") from None


def convert_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference TTSR keys: keep MainNet/LTE, drop the frozen LTE copy and the parameter-free search."""
    sd, unknown = {}, []
    for key, value in state.items():
        root = key.split(".", 1)[0]
        if root in ("LTE_copy", "SearchNet") or "_copy." in key:
            continue
        if root in ("MainNet", "LTE"):
            sd[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"reference TTSR checkpoint has unexpected keys: {some(unknown)}")
    return sd


# OpenMMLab → reference names. Single convolutions (module path without .weight/.bias):
_MM_MODULES = {
    "generator.sfe.conv_first": "MainNet.SFE.conv_head",
    "generator.sfe.conv_last": "MainNet.SFE.conv_tail",
    "generator.conv_first1": "MainNet.conv11_head",
    "generator.conv_last1": "MainNet.conv11_tail",
    "generator.up1.upsample_conv": "MainNet.conv12",
    "generator.conv_first2": "MainNet.conv22_head",
    "generator.csfi2.conv1to2": "MainNet.ex12.conv12",
    "generator.csfi2.conv2to1": "MainNet.ex12.conv21",
    "generator.csfi2.conv_merge1": "MainNet.ex12.conv_merge1",
    "generator.csfi2.conv_merge2": "MainNet.ex12.conv_merge2",
    "generator.conv_last2_1": "MainNet.conv21_tail",
    "generator.conv_last2_2": "MainNet.conv22_tail",
    "generator.up2.upsample_conv": "MainNet.conv23",
    "generator.conv_first3": "MainNet.conv33_head",
    "generator.csfi3.conv1to2": "MainNet.ex123.conv12",
    "generator.csfi3.conv1to4": "MainNet.ex123.conv13",
    "generator.csfi3.conv2to1": "MainNet.ex123.conv21",
    "generator.csfi3.conv2to4": "MainNet.ex123.conv23",
    "generator.csfi3.conv4to1_1": "MainNet.ex123.conv31_1",
    "generator.csfi3.conv4to1_2": "MainNet.ex123.conv31_2",
    "generator.csfi3.conv4to2": "MainNet.ex123.conv32",
    "generator.csfi3.conv_merge1": "MainNet.ex123.conv_merge1",
    "generator.csfi3.conv_merge2": "MainNet.ex123.conv_merge2",
    "generator.csfi3.conv_merge4": "MainNet.ex123.conv_merge3",
    "generator.conv_last3_1": "MainNet.conv31_tail",
    "generator.conv_last3_2": "MainNet.conv32_tail",
    "generator.conv_last3_3": "MainNet.conv33_tail",
    "generator.merge_features.conv1to4": "MainNet.merge_tail.conv13",
    "generator.merge_features.conv2to4": "MainNet.merge_tail.conv23",
    "generator.merge_features.conv_merge": "MainNet.merge_tail.conv_merge",
    "generator.merge_features.conv_last1": "MainNet.merge_tail.conv_tail1",
    "generator.merge_features.conv_last2": "MainNet.merge_tail.conv_tail2",
    "extractor.img_normalize": "LTE.sub_mean",
    "extractor.slice1.0": "LTE.slice1.0",
    "extractor.slice2.2": "LTE.slice2.2",
    "extractor.slice2.5": "LTE.slice2.5",
    "extractor.slice3.7": "LTE.slice3.7",
    "extractor.slice3.10": "LTE.slice3.10",
}
# Residual-block lists (``<list>.<i>.conv1|conv2``):
_MM_BLOCKS = {
    "generator.sfe.body": "MainNet.SFE.RBs",
    "generator.res_block1": "MainNet.RB11",
    "generator.res_block2_1": "MainNet.RB21",
    "generator.res_block2_2": "MainNet.RB22",
    "generator.res_block3_1": "MainNet.RB31",
    "generator.res_block3_2": "MainNet.RB32",
    "generator.res_block3_3": "MainNet.RB33",
}
_MM_BLOCK_RE = re.compile(r"^(.+)\.(\d+)\.(conv[12])$")


def convert_mmagic(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenMMLab TTSR state dict (``generator.*``, ``extractor.*``) → reference key names.

    Everything outside the generator and the extractor (``extractor_copy``, ``discriminator``,
    losses) is dropped; an unrecognised generator/extractor key raises :class:`WeightsError`.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in strip_prefix(state_dict).items():
        if key.split(".", 1)[0] not in ("generator", "extractor"):
            continue
        module, _, param = key.rpartition(".")
        target = _MM_MODULES.get(module)
        if target is None:
            m = _MM_BLOCK_RE.match(module)
            if m and m.group(1) in _MM_BLOCKS:
                target = f"{_MM_BLOCKS[m.group(1)]}.{m.group(2)}.{m.group(3)}"
        if target is None or param not in ("weight", "bias"):
            unknown.append(key)
            continue
        new_key = f"{target}.{param}"
        if new_key in out:
            raise WeightsError(f"OpenMMLab checkpoint has {key!r} twice")
        out[new_key] = value
    if unknown:
        raise WeightsError(f"unrecognised OpenMMLab TTSR keys: {some(unknown)}")
    if not out:
        raise WeightsError("OpenMMLab checkpoint without generator/extractor weights")
    return out


FOREIGN_FORMATS = (
    ForeignFormat("reference", frozenset({"MainNet", "LTE"}), convert_reference, infer_ttsr_config,
                  "MainNet.*/LTE.* (reference TTSR)"),
    ForeignFormat("mmagic", frozenset({"generator", "extractor"}), convert_mmagic, infer_ttsr_config,
                  "generator.*/extractor.* (OpenMMLab)"),
)
