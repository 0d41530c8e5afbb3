"""The ``refsr`` command never destroys an input, fails early and says what is wrong in one line.

(issue 14, items 1, 5, 9 and 10) Real files, real symlinks and hard links; the end-to-end cases
run ``python -m napari_refsr`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_refsr
from napari_refsr import cli, imageio, weights

REPO = Path(napari_refsr.__file__).resolve().parent.parent
RNG = np.random.default_rng(11)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path, tiny_checkpoint):
    """lr.png (12×12), ref.png (48×48) and the tiny model in tmp_path/d, plus their digests."""
    d = tmp_path / "d"
    d.mkdir()
    imageio.write_image(d / "lr.png", (RNG.random((12, 12)) * 255).astype(np.uint8))
    imageio.write_image(d / "ref.png", (RNG.random((48, 48)) * 255).astype(np.uint8))
    return d, tiny_checkpoint, {p.name: _digest(p) for p in d.iterdir()}


def _main(capsys, *args) -> tuple[int, str]:
    """``refsr upscale ARGS`` in this process: (exit status, stderr)."""
    status = cli.main(["upscale", *map(str, args)])
    return status, capsys.readouterr().err


def _run(tmp_path: Path, *args, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m napari_refsr upscale ARGS`` in a subprocess, with an empty weights cache."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env[weights.CACHE_ENV] = str(tmp_path / "cache")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "napari_refsr", "upscale", *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------ 1: path clashes


def _clash_args(d: Path, case: str) -> list:
    lr, ref = d / "lr.png", d / "ref.png"
    if case == "symlink":
        (d / "link.png").symlink_to(lr)
        return [lr, ref, "-o", d / "link.png"]
    if case == "hardlink":
        os.link(lr, d / "hard.png")
        return [lr, ref, "-o", d / "hard.png"]
    if case == "symlinked-folder":
        (d.parent / "alias").symlink_to(d, target_is_directory=True)
        return [lr, ref, "-o", d.parent / "alias" / "ref.png"]
    return {
        "output=lr": [lr, ref, "-o", lr],
        "output=ref": [lr, ref, "-o", ref],
        "output=second ref": [lr, ref, lr, "-o", d / "x.png", "--confidence", lr],
        "confidence=lr": [lr, ref, "-o", d / "out.png", "--confidence", lr],
        "dotdot": [lr, ref, "-o", d / ".." / d.name / "lr.png"],
        "confidence=output": [lr, ref, "-o", d / "out.png", "--confidence", d / "out.png"],
        "source=output": [lr, ref, "-o", d / "out.tif", "--source", d / ".." / d.name / "out.tif"],
    }[case]


@pytest.mark.parametrize("case", ["output=lr", "output=ref", "output=second ref", "confidence=lr", "dotdot",
                                  "symlink", "hardlink", "symlinked-folder", "confidence=output",
                                  "source=output"])
def test_an_output_that_is_an_input_or_another_output_is_refused_before_any_work(files, capsys, case):
    d, ckpt, before = files
    status, err = _main(capsys, *_clash_args(d, case), "--model", ckpt, "-q")
    assert status == cli.EXIT_USAGE
    assert err.count("\n") == 1 and "is the same file as" in err and "nothing was done" in err, err
    assert {p.name: _digest(p) for p in d.iterdir() if p.name in before} == before  # inputs untouched
    assert not (d / "out.png").exists() and not (d / "out.tif").exists() and not (d / "x.png").exists()


def test_output_equal_to_the_input_end_to_end(files, tmp_path):
    d, ckpt, before = files
    proc = _run(tmp_path, d / "lr.png", d / "ref.png", "-o", "d/lr.png", "--model", ckpt)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("refsr: error: the output -o d/lr.png is the same file as the image LR")
    assert _digest(d / "lr.png") == before["lr.png"]


# ------------------------------------------------------------------------------ 9: fail early


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores mode bits: sysfs refuses it)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_an_unwritable_output_folder_fails_before_the_model_is_even_loaded(files, tmp_path, capsys):
    d, _, _ = files
    folder = _unwritable_folder(tmp_path)
    status, err = _main(capsys, d / "lr.png", d / "ref.png", "-o", folder / "out.png", "--model",
                        tmp_path / "no-such-model.pt")
    assert status == cli.EXIT_USAGE
    assert f"folder {folder} is not writable" in err and "no-such-model" not in err, err
    assert not list(folder.glob(".out.png.*"))


def test_an_unwritable_confidence_folder_fails_before_the_computation(files, tmp_path):
    d, ckpt, _ = files
    folder = _unwritable_folder(tmp_path)
    proc = _run(tmp_path, d / "lr.png", d / "ref.png", "-o", d / "out.png", "--confidence", folder / "c.png",
                "--model", ckpt)
    assert proc.returncode == 2 and "not writable" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (d / "out.png").exists()


# ------------------------------------------------------------------------------ 10: messages


def test_an_output_that_is_a_folder_is_called_a_folder(files, capsys):
    d, ckpt, _ = files
    (d / "out").mkdir()
    status, err = _main(capsys, d / "lr.png", d / "ref.png", "-o", d / "out", "--model", ckpt)
    assert status == 2 and "is a directory" in err and "extension" not in err, err


def test_a_tiny_reference_is_told_the_real_minimum(files, capsys):
    d, ckpt, _ = files
    imageio.write_image(d / "small.png", np.zeros((2, 2), np.uint8))
    status, err = _main(capsys, d / "lr.png", d / "small.png", "-o", d / "out.png", "--model", ckpt)
    assert status == 2 and "16×16" in err, err


def test_load_model_of_a_folder_says_folder(tmp_path):
    with pytest.raises(napari_refsr.RefSRError, match="is a folder, not a file"):
        napari_refsr.load_model(tmp_path, device="cpu")


def test_load_model_of_vgg19_refuses_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(weights.BASE_URL_ENV, "http://127.0.0.1:9")  # a download would fail loudly
    with pytest.raises(napari_refsr.RefSRError, match="not a super-resolution model"):
        napari_refsr.load_model("vgg19", device="cpu")
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ 5: no silent garbage


def test_float32_near_its_limit_end_to_end_is_finite_and_quiet(tmp_path, tiny_checkpoint):
    lr = ((RNG.random((12, 12)) * 2 - 1) * 3e38).astype(np.float32)
    ref = ((RNG.random((48, 48)) * 2 - 1) * 3e38).astype(np.float32)
    imageio.write_image(tmp_path / "lr.tif", lr)
    imageio.write_image(tmp_path / "ref.tif", ref)
    proc = _run(tmp_path, "lr.tif", "ref.tif", "-o", "out.tif", "--confidence", "c.png", "--model", tiny_checkpoint)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    out = imageio.read_image(tmp_path / "out.tif")
    assert np.isfinite(out).all() and np.abs(out).max() > 1e37


def test_nan_weights_end_to_end_fail_with_one_line(tmp_path):
    from conftest import TINY, tiny_network

    state = tiny_network().state_dict()
    state["MainNet.SFE.conv_head.bias"][:] = float("nan")
    weights.save_checkpoint(tmp_path / "nan.pt", state, dict(TINY, arch="ttsr"))
    imageio.write_image(tmp_path / "lr.png", (RNG.random((12, 12)) * 255).astype(np.uint8))
    imageio.write_image(tmp_path / "ref.png", (RNG.random((48, 48)) * 255).astype(np.uint8))
    proc = _run(tmp_path, "lr.png", "ref.png", "-o", "out.png", "--model", "nan.pt")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "NaN or infinite" in proc.stderr
    assert not (tmp_path / "out.png").exists()
