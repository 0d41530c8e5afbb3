"""Schema features that only newer ComfyUI versions have, used only where the running ComfyUI has them.

The check is on the running ``io.Schema`` itself (does it take the field?), which is what a
version-number check would stand for, and it also holds for ComfyUI builds between releases.
"""

from __future__ import annotations

import inspect
from typing import Any

from comfy_api.latest import io

__all__ = ["schema_extras"]


def _schema_fields() -> set[str]:
    try:
        return set(inspect.signature(io.Schema).parameters)
    except (TypeError, ValueError):  # not introspectable: use none of the optional features
        return set()


def schema_extras(**features: Any) -> dict[str, Any]:
    """The ``io.Schema`` keyword arguments among ``features`` that this ComfyUI accepts (e.g.
    ``search_aliases``, added after 0.3.64); the others are dropped."""
    fields = _schema_fields()
    return {name: value for name, value in features.items() if name in fields}

