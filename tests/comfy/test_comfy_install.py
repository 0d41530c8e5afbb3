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
import tomllib

import pytest
import torch

from comfy_standin import ROOT, STANDIN

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


def _tracked_files() -> list[str]:
    """What a clone of this checkout holds (tracked files, and new ones not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


LOAD_LIKE_COMFYUI = r"""
import asyncio, importlib.util, json, os, sys
standin, pack = sys.argv[1], sys.argv[2]
sys.path.insert(0, standin)  # ComfyUI's own modules (folder_paths, comfy, comfy_api)
name = pack.replace(".", "_x_")  # what ComfyUI's load_custom_node does with a pack folder
spec = importlib.util.spec_from_file_location(name, os.path.join(pack, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
try:
    spec.loader.exec_module(module)
except Exception as err:
    print(json.dumps({"import_failed": f"{type(err).__name__}: {err}"}))
    raise SystemExit(0)
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
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "napari-refsr"
    for rel in _tracked_files():
        (pack / rel).parent.mkdir(parents=True, exist_ok=True)
        (pack / rel).write_bytes((ROOT / rel).read_bytes())
    script = tmp_path / "load_like_comfyui.py"
    script.write_text(LOAD_LIKE_COMFYUI)

    def load():
        run = subprocess.run([py, "-I", str(script), str(STANDIN), str(pack)], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
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
