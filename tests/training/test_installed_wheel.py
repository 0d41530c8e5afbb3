"""The built wheel carries the trainer (as ``napari_refsr.training``) and every package, and an
installed, non-editable copy fine-tunes from napari outside the source checkout — what a user of
``pip install napari-refsr[napari]`` gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "napari.yaml", "napari_refsr", "training"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout's sources (the build writes build/ and
    *.egg-info next to its sources: never into the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "logs", "build", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(tmp / "dist"), str(src)], check=True, timeout=300)
    (found,) = (tmp / "dist").glob("napari_refsr-*.whl")
    return found


def _packages(folder: Path, prefix: str) -> set[str]:
    return {".".join([prefix, *p.parent.relative_to(folder).parts]) for p in folder.rglob("__init__.py")
            if "__pycache__" not in p.parts}


def test_wheel_holds_every_package_and_no_top_level_training(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    in_wheel = {n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    expected = _packages(ROOT / "napari_refsr", "napari_refsr") | _packages(ROOT / "training", "napari_refsr.training")
    assert in_wheel == expected  # pyproject.toml's hand-written package list is complete
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"napari_refsr"}
    for data in ("napari_refsr/napari.yaml", "napari_refsr/data/refsr-compact.safetensors",
                 "napari_refsr/training/train.py", "napari_refsr/training/configs/refsr-compact.yaml"):
        assert data in names


@pytest.mark.gui
def test_installed_copy_fine_tunes_from_napari_outside_the_checkout(wheel, tmp_path, tiny_checkpoint):
    pytest.importorskip("napari")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)  # the installed copy first: the checkout is not on the path
    script = Path(__file__).with_name("installed_finetune.py")
    proc = subprocess.run([sys.executable, str(script), str(site), str(tiny_checkpoint), str(tmp_path / "run")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=540)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["outcome"] == "done", result["status"]
    assert result["steps"] == [1, 2]
    assert result["exported"] == str(tmp_path / "run" / "model.pt")
    assert result["upscaled"] == [128, 128]
    shipped = yaml.safe_load((ROOT / "training" / "configs" / "refsr-compact.yaml").read_text())
    assert result["config"] == [shipped["model"]["n_feats"], shipped["data"]["crop"]]


def test_config_by_the_name_of_a_shipped_one(tmp_path, monkeypatch):
    from napari_refsr.errors import RefSRError
    from training.config import load_config

    monkeypatch.chdir(tmp_path)  # not relative to the checkout
    shipped = yaml.safe_load((ROOT / "training" / "configs" / "srntt.yaml").read_text())
    assert load_config("srntt")["model"]["arch"] == shipped["model"]["arch"] == "srntt"
    with pytest.raises(RefSRError, match=r"config file not found: nothing.*shipped configs: refsr-compact, srntt"):
        load_config("nothing")
