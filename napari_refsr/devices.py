"""Device choice and out-of-memory handling shared by every front end."""

from __future__ import annotations

import torch

from .errors import RefSRError

__all__ = ["choose_device", "is_out_of_memory", "release_memory"]


def choose_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA, then Apple MPS, then CPU; otherwise the named device, checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device is not None and not isinstance(device, str):
        raise RefSRError(f"device must be a name such as 'auto', 'cpu' or 'cuda:0', got {device!r}")
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RefSRError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here; use 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RefSRError("device 'mps' asked for, but Apple MPS is not available; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise RefSRError(f"unknown device {device!r}; use auto, cuda, cuda:N, mps or cpu") from err


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (and CPU allocation failures)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


def release_memory(device: torch.device) -> None:
    """Return cached blocks to the driver after an OOM, so a smaller retry can fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
