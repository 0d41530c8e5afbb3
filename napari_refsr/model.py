"""A loaded RefSR model: the network, its architecture config, where it came from, its device.

``load_model`` accepts a registry name (downloaded and hash-checked by :mod:`.weights`) or a
checkpoint path in any supported format, builds the matching architecture and loads the weights
strictly. Loaded models are cached, so front ends that run many times load once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import weights
from .archs.convert import load_strict
from .archs.registry import arch_of, build_network, check_state_dict
from .defaults import DEFAULT_MODEL
from .devices import choose_device
from .errors import WeightsError

__all__ = ["RefSRModel", "load_model", "DEFAULT_MODEL"]



@dataclass
class RefSRModel:
    """A network ready for inference, with the facts front ends show and cache on."""

    network: torch.nn.Module
    config: dict
    name: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    half: bool = False
    meta: dict = field(default_factory=dict)
    scale: int = 4

    @property
    def arch(self) -> str:
        return arch_of(self.config)

    def to(self, device: str | torch.device = "auto", half: bool | None = None) -> "RefSRModel":
        """Move the network (in place) to ``device``; fp16 only where it helps (CUDA)."""
        dev = choose_device(device)
        use_half = self.half if half is None else bool(half)
        use_half = use_half and dev.type == "cuda"
        self.network.to(device=dev, dtype=torch.float16 if use_half else torch.float32)
        self.device, self.half = dev, use_half
        return self

    def __repr__(self) -> str:
        return f"RefSRModel({self.name!r}, arch={self.arch}, device={self.device}, half={self.half})"


_CACHE: dict[tuple, RefSRModel] = {}
_CACHE_LOCK = threading.Lock()


def _resolve(source: str | Path | None, cache_dir, progress) -> tuple[Path, str]:
    """(file, display name): registry models are named by their name, files by their file name."""
    if source is None or source == "":
        source = DEFAULT_MODEL
    text = str(source)
    if text in weights.REGISTRY and text not in weights.model_names() and not Path(text).expanduser().is_file():
        raise WeightsError(f"{text!r} names {weights.REGISTRY[text].description}, not a super-resolution "
                           f"model; models: {', '.join(weights.model_names())}")
    path = weights.resolve(source, cache_dir=cache_dir, progress=progress)
    return path, path.name if Path(text).expanduser().is_file() else text


def _finite(tensor: torch.Tensor) -> bool:
    """All values finite (numpy: on a busy CPU torch's thread pool makes this 100× slower)."""
    t = tensor.detach().cpu()
    return bool(np.isfinite((t.float() if t.dtype == torch.bfloat16 else t).numpy()).all())


def _check_finite(state_dict: dict, path: Path) -> None:
    """Refuse weights holding NaN/inf: they would give an all-black (or all-NaN) image, exit 0."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not _finite(v)]
    if bad:
        shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise WeightsError(f"checkpoint {path} has NaN or infinite values in {shown}; the file is damaged "
                           "or comes from a diverged training run")


def load_model(
    source: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    half: bool = False,
    cache_dir: str | Path | None = None,
    progress=True,
    cache: bool = True,
) -> RefSRModel:
    """Load a registry model by name, or a checkpoint file, onto ``device`` (strict key match).

    ``progress`` goes to :func:`weights.fetch` for a download: a bool (tqdm bar) or a
    ``callback(bytes_done, bytes_total)``."""
    path, name = _resolve(source, cache_dir, progress)
    dev = choose_device(device)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(dev), bool(half))
    with _CACHE_LOCK:
        if cache and key in _CACHE:
            return _CACHE[key].to(dev, half)
    ckpt = weights.read_checkpoint(path)
    _check_finite(ckpt.state_dict, path)
    check_state_dict(ckpt.state_dict, ckpt.config, f"{path}: {arch_of(ckpt.config)}")  # before allocating
    network = build_network(ckpt.config)
    load_strict(network, ckpt.state_dict,
                f"checkpoint {path} does not fit the {arch_of(ckpt.config)} architecture {ckpt.config}")
    network.eval().requires_grad_(False)
    model = RefSRModel(network, dict(ckpt.config), name, meta=dict(ckpt.meta or {})).to(dev, half)
    if cache:
        with _CACHE_LOCK:
            _CACHE[key] = model
    return model
