"""The architectures: name → config class, network class and the foreign checkpoint formats its
converter reads. Adding a network is its own files plus one line in :data:`ARCHITECTURES`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from ..errors import RefSRError, WeightsError
from . import ttsr_convert
from .base import RefSRNetwork
from .convert import ForeignFormat, some
from .guard import check_fields, expected_shapes
from .srntt import SRNTT, SRNTTConfig
from .ttsr import TTSR, TTSRConfig

__all__ = ["Architecture", "ARCHITECTURES", "DEFAULT_ARCH", "arch_of", "architecture", "build_network", "check_state_dict",
           "check_export", "foreign_formats", "model_keys", "SHARED_KEYS"]

SHARED_KEYS = ("arch", "n_feats", "scale")  # config fields every architecture has
DEFAULT_ARCH = "ttsr"  # what a config without "arch" describes (files from before there was a choice)


@dataclass(frozen=True)
class Architecture:
    """One network family: its config dataclass, its module and the foreign formats it converts."""

    config_cls: type
    network_cls: type[RefSRNetwork]
    foreign: tuple[ForeignFormat, ...] = ()
    # our exports of this network are completed by its config dataclass and checked key by key
    # when read (a one-line error before loading); otherwise their config is kept as stored
    # (``load_model`` checks them key by key before building: :func:`check_state_dict`)
    check_exports: bool = False

    @property
    def name(self) -> str:
        return self.config_cls.__dataclass_fields__["arch"].default

    @property
    def title(self) -> str:
        return self.network_cls.__name__

    def defaults(self) -> dict:
        """Field → default of the config dataclass (tuples as lists, as YAML and JSON hold them)."""
        return self.config_cls().to_dict()


ARCHITECTURES: dict[str, Architecture] = {
    "ttsr": Architecture(TTSRConfig, TTSR, ttsr_convert.FOREIGN_FORMATS, check_exports=True),
    "srntt": Architecture(SRNTTConfig, SRNTT),
}


def architecture(name: str) -> Architecture:
    """The registry entry of ``name``; an unknown name raises :class:`RefSRError` listing the known."""
    if name not in ARCHITECTURES:
        raise RefSRError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def arch_of(config: Mapping) -> str:
    """The architecture name a config describes."""
    return config.get("arch", DEFAULT_ARCH)


def model_keys(name: str) -> tuple[str, ...]:
    """Config fields only architecture ``name`` has (the others, :data:`SHARED_KEYS`, all have)."""
    return tuple(f.name for f in dataclasses.fields(architecture(name).config_cls) if f.name not in SHARED_KEYS)


def build_network(config: Mapping) -> RefSRNetwork:
    """An untrained network of the architecture described by ``config`` (``config["arch"]``)."""
    arch = arch_of(config)
    entry = architecture(arch)
    expected_shapes(entry.config_cls, entry.network_cls, config)  # bounds and size before allocating
    names = set(entry.config_cls.__dataclass_fields__)
    try:
        cfg = entry.config_cls(**{k: v for k, v in config.items() if k in names})
    except (TypeError, ValueError) as err:
        raise RefSRError(f"invalid {arch} architecture config {dict(config)}: {err}") from err
    return entry.network_cls(cfg)


def foreign_formats() -> Iterator[tuple[Architecture, ForeignFormat]]:
    """Every (architecture, foreign format) pair, in registry order."""
    for entry in ARCHITECTURES.values():
        for fmt in entry.foreign:
            yield entry, fmt


def check_export(sd: Mapping[str, torch.Tensor], config: dict) -> dict:
    """The config of one of our exports, its integer fields checked (:mod:`.guard`); for
    architectures with ``check_exports``, completed by the config dataclass and checked against
    the tensors (others, and unknown architectures, pass as stored: loading them names any problem)."""
    entry = ARCHITECTURES.get(config["arch"])
    if entry is None:
        return dict(config)
    check_fields(entry.config_cls, config)  # n_feats 8.0 or 20000: refused before anything is built
    if not entry.check_exports:
        return dict(config)
    try:
        config = entry.config_cls(**config).to_dict()
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"invalid {entry.title} config {config} ({exc})") from None
    check_state_dict(sd, config, "napari-refsr")
    return config


def check_state_dict(sd: Mapping[str, torch.Tensor], config: dict, fmt: str) -> None:
    """Check keys and shapes against a network of ``config`` for a one-line error naming the problem."""
    entry = architecture(arch_of(config))
    expected = expected_shapes(entry.config_cls, entry.network_cls, config)  # bounds first; a meta build
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({some(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} wrong shapes ({some(wrong, 2)})")
        settings = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in config.items()
                             if k not in ("arch", "scale"))
        raise WeightsError(f"{fmt} weights do not fit a {entry.title} with {settings}: " + "; ".join(parts))
