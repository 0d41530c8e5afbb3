"""The node pack as ComfyUI-Manager and the Comfy Registry install it, and ready to publish.

Manager (and a Registry install through it) clones the repository into ``custom_nodes/`` and runs
``pip install <line>`` for each line of ``requirements.txt``; nothing installs the core package.
The fresh-venv test does exactly that next to the usual ComfyUI packages (torch, numpy, Pillow),
then loads the pack the way ComfyUI's ``load_custom_node`` does, with the stand-in ComfyUI modules.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest
import torch

from comfy_standin import ROOT
from comfy_standin.checkout import copy_checkout, load_pack_script

REPOSITORY = "https://github.com/napari-refsr/napari-refsr"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def manager_lines(path=ROOT / "requirements.txt") -> list[str]:
    """The requirement lines ComfyUI-Manager installs: comment lines skipped, inline comments cut."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            lines.append(line)
    return lines


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_are_the_core_dependencies_without_torch():
    core = [d for d in PYPROJECT["project"]["dependencies"] if _name(d) != "torch"]
    assert manager_lines() == core
    assert not {"torch", "torchvision", "torchaudio"} & {_name(r) for r in manager_lines()}


def test_pyproject_is_ready_for_the_comfy_registry():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    # the Registry's rules for the node id, and a three-part version
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["urls"]["Repository"] == REPOSITORY
    assert all(url.startswith(REPOSITORY) for url in project["urls"].values())
    assert comfy["PublisherId"] and comfy["DisplayName"]
    icon = comfy["Icon"]
    raw = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert icon.startswith(raw) and (ROOT / icon[len(raw):]).is_file()
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert project["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_docs_name_the_repository_and_no_placeholder():
    docs = (ROOT / "docs" / "comfyui.md").read_text()
    assert f"git clone {REPOSITORY}" in docs
    assert "repository URL>" not in docs
    assert REPOSITORY in (ROOT / "README.md").read_text()


AFTER_LOADING = r"""
import asyncio, json, os
import folder_paths, napari_refsr, torch
nodes = asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
loader, upscale = nodes
(model,) = loader.execute(model_name="refsr-compact").args
torch.manual_seed(0)
gray = torch.rand(1, 16, 16, 1).repeat(1, 1, 1, 3)
out, conf = upscale.execute(image=gray, reference=torch.rand(1, 64, 64, 3), refsr_model=model, tile_size=32).args
print(json.dumps({"nodes": [n.define_schema().node_id for n in nodes], "core": napari_refsr.__file__,
                  "shape": list(out.shape), "equal_channels": bool((out[..., 0] == out[..., 2]).all()),
                  "inputs": sorted(os.listdir(folder_paths.get_input_directory()))}))
"""


def _script(pack) -> str:
    """Load the pack as ComfyUI does; an import error is printed as ComfyUI's log would show it."""
    return ("import json\ntry:\n" + textwrap.indent(load_pack_script(pack), "    ")
            + "except Exception as err:\n"
              "    print(json.dumps({'import_failed': f'{type(err).__name__}: {err}'}))\n"
              "    raise SystemExit(0)\n" + AFTER_LOADING)


@pytest.mark.timeout(900)
def test_manager_style_install_in_a_fresh_venv_imports_the_pack(tmp_path):
    """A fresh venv with ComfyUI's usual packages, the repository cloned into custom_nodes/ and
    requirements.txt installed line by line: the pack loads from its own folder (no core package
    installed), runs the shipped model, and pip never touched torch."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    def pip(*args):
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True, env=env)

    def installed(dist):
        return subprocess.run([py, "-I", "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                              capture_output=True, text=True, env=env).stdout.strip()

    pip(f"torch=={torch.__version__.split('+')[0]}", "numpy", "pillow")  # what every ComfyUI has
    torch_version = installed("torch")
    pack = copy_checkout(tmp_path / "ComfyUI" / "custom_nodes" / "napari-refsr")
    script = tmp_path / "load_like_comfyui.py"
    script.write_text(_script(pack))

    def load():
        run = subprocess.run([py, "-I", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(run.stdout.strip().splitlines()[-1])

    # before requirements.txt: the log line says what to run (ComfyUI shows it as IMPORT FAILED)
    failed = load()["import_failed"]
    assert "ImportError" in failed and f"-m pip install -r {pack / 'requirements.txt'}" in failed
    for line in manager_lines(pack / "requirements.txt"):  # what ComfyUI-Manager runs
        pip(line)
    assert installed("torch") == torch_version  # no second torch
    assert installed("napari-refsr") == ""  # the core comes from the clone, not from a package
    result = load()
    assert result["nodes"] == ["RefSRModelLoader", "RefSRUpscale"]
    assert result["core"] == str(pack / "napari_refsr" / "__init__.py")
    assert result["shape"] == [1, 64, 64, 3] and result["equal_channels"]
    assert {"refsr_example_lr.png", "refsr_example_ref.png", "refsr_example_ref_detail.png"} <= set(result["inputs"])
