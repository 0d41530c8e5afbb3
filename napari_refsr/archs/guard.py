"""Architecture configs checked before anything is allocated: a checkpoint cannot make us build
whatever it describes.

A 228-byte file whose config says ``n_feats: 20000`` would allocate 14 GB, and one key such as
``MainNet.RB11.199999.conv1.weight`` would build 200 000 residual blocks. So, in this order:

1. every integer field is a whole number (not 8.0, not True) within :data:`MAX_INT` — cheap;
2. the network is built on the ``meta`` device (shapes only, no memory, initialisation skipped),
   which gives the expected tensor shapes and the parameter count, held to
   :data:`MAX_PARAMETERS`;
3. only then the caller compares the file's tensors with those shapes and builds the real network.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable, Mapping

import torch
from torch.overrides import TorchFunctionMode

from ..errors import WeightsError

__all__ = ["MAX_INT", "MAX_PARAMETERS", "check_fields", "meta_shapes", "expected_shapes"]

MAX_INT = 1024  # any width or block count; the published TTSR uses 64 features and 16 blocks
MAX_PARAMETERS = 100_000_000  # 400 MB of float32; the published TTSR has 6.7 M


def _int_like(default) -> bool:
    return isinstance(default, int) and not isinstance(default, bool)


def check_fields(config_cls: type, config: Mapping) -> None:
    """Integer fields (and tuples of them) of ``config`` are ints in [0, MAX_INT]; else WeightsError."""
    for f in dataclasses.fields(config_cls):
        if f.name not in config:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        value = config[f.name]
        if _int_like(default):
            values = [value]
        elif isinstance(default, (tuple, list)) and default and all(_int_like(d) for d in default):
            if isinstance(value, str):  # "16+16+8+4": the config class parses it
                try:
                    values = [int(v) for v in value.split("+")]
                except ValueError:
                    raise WeightsError(f"architecture field {f.name}={value!r} is not a list of whole numbers") from None
            elif isinstance(value, (tuple, list)):
                values = list(value)
            else:
                raise WeightsError(f"architecture field {f.name}={value!r} must be a list of whole numbers")
        else:
            continue
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise WeightsError(f"architecture field {f.name}={value!r} must hold whole numbers, not "
                                   f"{type(v).__name__} {v!r}")
            if not 0 <= v <= MAX_INT:
                raise WeightsError(f"architecture field {f.name}={value!r} is out of bounds (0..{MAX_INT}); "
                                   f"refused before building anything (a damaged or hostile file?)")


class _SkipInit(TorchFunctionMode):
    """Inside ``torch.device("meta")``: in-place ops on meta tensors (weight initialisation,
    ``copy_``) are skipped — they hold no data, and some would import seconds of compiler code."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


def meta_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Key → shape of the state dict of the module ``build()`` makes, without allocating it."""
    with torch.device("meta"), _SkipInit():
        net = build()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@functools.lru_cache(maxsize=16)
def _cached(config_cls: type, net_cls: type, config_json: str) -> dict[str, tuple[int, ...]]:
    cfg = config_cls(**json.loads(config_json))
    shapes = meta_shapes(lambda: net_cls(cfg))
    total = sum(_numel(s) for s in shapes.values())
    if total > MAX_PARAMETERS:
        raise WeightsError(f"the {net_cls.__name__} described ({json.loads(config_json)}) would hold {total:,} values, "
                           f"more than the {MAX_PARAMETERS:,} allowed; refused before allocating it")
    return shapes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def expected_shapes(config_cls: type, net_cls: type, config: Mapping) -> dict[str, tuple[int, ...]]:
    """Checked fields (:func:`check_fields`), then the state-dict shapes of that network from a
    meta build, whose size is held to :data:`MAX_PARAMETERS`. WeightsError on any problem."""
    check_fields(config_cls, config)
    names = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k in names}
    try:
        config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"invalid {net_cls.__name__} config {dict(config)} ({exc})") from None
    return _cached(config_cls, net_cls, json.dumps(kwargs, sort_keys=True))
