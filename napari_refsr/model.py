"""A loaded RefSR model: the network, its architecture config, where it came from, its device.

``load_model`` accepts a registry name (downloaded and hash-checked by :mod:`.weights`) or a
checkpoint path in any supported format, builds the matching architecture and loads the weights
strictly. Loaded models are cached, so front ends that run many times load once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import weights
from .archs.convert import load_strict
from .archs.registry import arch_of, build_network
from .devices import choose_device

__all__ = ["RefSRModel", "load_model", "DEFAULT_MODEL"]

DEFAULT_MODEL = "refsr-compact"  # shipped in the package: works offline (docs/model-card.md)


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
    path = weights.resolve(source, cache_dir=cache_dir, progress=progress)
    return path, path.name if Path(str(source)).expanduser().is_file() else str(source)


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
    network = build_network(ckpt.config)
    load_strict(network, ckpt.state_dict,
                f"checkpoint {path} does not fit the {arch_of(ckpt.config)} architecture {ckpt.config}")
    network.eval().requires_grad_(False)
    model = RefSRModel(network, dict(ckpt.config), name, meta=dict(ckpt.meta or {})).to(dev, half)
    if cache:
        with _CACHE_LOCK:
            _CACHE[key] = model
    return model
