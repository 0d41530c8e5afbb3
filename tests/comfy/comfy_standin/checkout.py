"""The repository as ComfyUI users get it, for tests that run the pack outside this checkout: a copy
laid out like ``git clone`` makes it, and the few lines with which ComfyUI's ``load_custom_node``
imports a pack folder (for a script run by another Python)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from . import ROOT, STANDIN

__all__ = ["copy_checkout", "load_pack_script", "tracked_files"]


def tracked_files(root: Path = ROOT) -> list[str]:
    """Files a clone of the working tree would hold (tracked, plus new files git does not ignore)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    run = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=False)
    if run.returncode != 0:
        pytest.skip(f"{root} is not a git checkout")
    return [name for name in run.stdout.decode().split("\0") if name and (root / name).is_file()]


def copy_checkout(dest: Path, root: Path = ROOT) -> Path:
    """Copy the working tree to ``dest`` the way ``git clone`` lays it out; returns ``dest``."""
    for name in tracked_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return dest


def load_pack_script(pack: Path, standin: Path = STANDIN) -> str:
    """Python source that imports the pack folder ``pack`` as ComfyUI does (a package named after its
    path, the stand-in ComfyUI modules on ``sys.path``) and binds it to ``module``."""
    return f"""
import importlib.util, os, sys
sys.path.insert(0, {str(standin)!r})  # ComfyUI's own modules (folder_paths, comfy, comfy_api)
_folder = {str(pack)!r}
_name = _folder.replace(".", "_x_")  # what ComfyUI's load_custom_node does with a pack folder
_spec = importlib.util.spec_from_file_location(_name, os.path.join(_folder, "__init__.py"))
module = importlib.util.module_from_spec(_spec)
sys.modules[_name] = module
_spec.loader.exec_module(module)
"""
