"""Puts the stand-in ComfyUI modules (this folder) and the repository root on ``sys.path``.

Test modules call :func:`activate` before importing ``comfy``, ``folder_paths``, ``comfy_api`` or the
node pack. (The folder itself, not this package, is what ComfyUI's module names resolve against.)
"""

from __future__ import annotations

import sys
from pathlib import Path

STANDIN = Path(__file__).resolve().parent
ROOT = STANDIN.parents[2]  # the repository: the node pack as ComfyUI-Manager clones it
CORE_NODES = STANDIN / "core_nodes.json"  # recorded from a real ComfyUI (record_core_nodes.py)


def activate() -> None:
    for path in (str(ROOT), str(STANDIN)):
        if path not in sys.path:
            sys.path.insert(0, path)
