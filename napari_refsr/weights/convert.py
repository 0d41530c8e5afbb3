"""Foreign checkpoint files → our export, for formats that need more than the file itself."""

from __future__ import annotations

import os
from pathlib import Path

from ..archs.srntt_convert import convert_srntt_pytorch
from ..errors import WeightsError
from .checkpoint import load_state_dict_file, save_checkpoint
from .store import fetch

__all__ = ["convert_srntt_pytorch_file"]


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
    state = load_state_dict_file(src)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    vgg_path = Path(vgg) if vgg is not None else fetch("vgg19", cache_dir=cache_dir, progress=progress)
    try:
        sd, config = convert_srntt_pytorch(state, load_state_dict_file(vgg_path))
    except WeightsError as err:
        raise WeightsError(f"{src}: {err}") from None
    meta = {"source": "github.com/S-aiueo32/srntt-pytorch", "converted_from": Path(src).name}
    return save_checkpoint(dst, sd, config, meta)
