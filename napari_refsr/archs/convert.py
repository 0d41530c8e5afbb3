"""Shared pieces of the converters from foreign checkpoints: how a converter describes the format
it reads, and state-dict helpers (prefix stripping, short key lists, strict loading)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..errors import WeightsError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ForeignFormat:
    """A checkpoint layout of another project that one of our networks loads after conversion."""

    name: str  # ``Checkpoint.source_format``, e.g. "reference", "mmagic"
    roots: frozenset[str]  # top-level key names that identify it (``MainNet`` of ``MainNet.*``)
    convert: Callable[[StateDict], StateDict]  # its state dict → ours (WeightsError if it does not fit)
    infer_config: Callable[[StateDict], dict]  # our state dict → the architecture config
    expected: str  # how its keys look, for error messages: "MainNet.*/LTE.* (reference TTSR)"


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> StateDict:
    """Keys without a leading ``prefix`` (DataParallel/DDP wrappers save ``module.*``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def some(keys: list[str], n: int = 3) -> str:
    """The first ``n`` keys and how many more, for one-line messages."""
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_strict(net: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                error: type[Exception] = WeightsError) -> None:
    """``net.load_state_dict(strict=True)``; a mismatch raises ``error("<what>: <first lines>")``."""
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[1:3]) or (lines[0] if lines else "")
        raise error(f"{what}: {detail[:300]}") from None
