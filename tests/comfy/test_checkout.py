"""The repository as users get it: a clone under its default folder name, `napari-refsr`.

That name is not a Python identifier, so pytest imports the top-level `__init__.py` (the
ComfyUI entry) as a plain module, and ComfyUI imports it as a package named after its path. Both
must work: the suite has to pass in the clone, and ComfyUI has to find the node pack there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_standin import ROOT
from comfy_standin.checkout import copy_checkout, load_pack_script

FOLDER = "napari-refsr"  # what `git clone <url>` names the checkout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The working tree copied the way `git clone` lays it out, into a folder named `napari-refsr`."""
    return copy_checkout(tmp_path_factory.mktemp("clone") / FOLDER, ROOT)


def _python(clone: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(clone), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_suite_runs_in_a_clone_named_napari_refsr(clone):
    # the ComfyUI tests put the ComfyUI stand-in on sys.path, which is what made pytest's import of
    # the top-level __init__.py reach its ComfyUI branch and fail
    run = _python(clone, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/comfy/test_comfy_nodes.py",
                  "-k", "entrypoint or schemas")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("2 passed") and "error" not in summary, summary


def test_comfyui_finds_the_node_pack_in_a_clone_named_napari_refsr(clone):
    # ComfyUI's custom-node loader: the folder's __init__.py under a module name made from its path
    script = load_pack_script(clone, clone / "tests" / "comfy" / "comfy_standin") + """
import asyncio
assert not hasattr(module, "NODE_CLASS_MAPPINGS")
ext = asyncio.run(module.comfy_entrypoint())
print(sorted(n.define_schema().node_id for n in asyncio.run(ext.get_node_list())))
"""
    run = _python(clone, "-c", script, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "['RefSRModelLoader', 'RefSRUpscale']"
