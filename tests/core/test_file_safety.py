"""Written files get the mode a plain write would give, and a kill -9 mid-write leaves nothing for good.

(issue 14, items 4 and 9) Every writer goes through one atomic write (temp file + rename): the temp
file used to be ``mkstemp``'s 0600, which the rename passed on to images, maps, checkpoints and
plots whatever the umask, and a killed writer's hidden temp file stayed forever.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_refsr
from napari_refsr import imageio, weights

REPO = Path(napari_refsr.__file__).resolve().parent.parent
RNG = np.random.default_rng(5)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for a test, restoring it afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _writers(tmp_path: Path):
    from conftest import TINY, tiny_network

    state = tiny_network().state_dict()
    img = (RNG.random((8, 8)) * 255).astype(np.uint8)
    return {
        "png": lambda p: imageio.write_image(p.with_suffix(".png"), img),
        "tif": lambda p: imageio.write_image(p.with_suffix(".tif"), img.astype(np.float32)),
        "safetensors": lambda p: weights.save_checkpoint(p.with_suffix(".safetensors"), state, dict(TINY, arch="ttsr")),
        "pt": lambda p: weights.save_checkpoint(p.with_suffix(".pt"), state, dict(TINY, arch="ttsr")),
        "training checkpoint": lambda p: _torch_save({"step": 1}, p.with_suffix(".ckpt")),
    }


def _torch_save(obj, path: Path) -> Path:
    from training.checkpoints import atomic_torch_save

    return atomic_torch_save(obj, path)


@pytest.mark.parametrize("kind", ["png", "tif", "safetensors", "pt", "training checkpoint"])
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, kind, mask, expected):
    umask(mask)
    path = _writers(tmp_path)[kind](tmp_path / "f")
    assert _mode(path) == expected


@pytest.mark.parametrize("kind", ["png", "safetensors", "training checkpoint"])
def test_a_rewritten_file_keeps_its_mode(tmp_path, umask, kind):
    umask(0o077)
    write = _writers(tmp_path)[kind]
    path = write(tmp_path / "f")
    path.chmod(0o644)
    assert _mode(write(tmp_path / "f")) == 0o644


def test_cli_outputs_follow_the_umask(tmp_path, tiny_checkpoint):
    imageio.write_image(tmp_path / "lr.png", (RNG.random((12, 12)) * 255).astype(np.uint8))
    imageio.write_image(tmp_path / "ref.png", (RNG.random((48, 48)) * 255).astype(np.uint8))
    env = dict(os.environ, PYTHONPATH=str(REPO), **{weights.CACHE_ENV: str(tmp_path / "cache")})
    proc = subprocess.run([sys.executable, "-c", "import os, sys; os.umask(0o022); from napari_refsr.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", "upscale", "lr.png", "ref.png", "-o", "out.png",
                           "--confidence", "c.tif", "--source", "s.tif", "--model", str(tiny_checkpoint), "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [_mode(tmp_path / n) for n in ("out.png", "c.tif", "s.tif")] == [0o644] * 3


# ------------------------------------------------------------------------------ kill -9 mid-write

_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from napari_refsr.files import atomic_write

    def write(f):
        f.write(b"half an image")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

    atomic_write(sys.argv[1], write)
""")


def _killed_mid_write(target: Path) -> list[Path]:
    """Start a real process that writes ``target``, kill -9 it mid-write; return the temp files left."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stdout.close()
    return sorted(target.parent.glob(f".{target.name}.*"))


def test_a_temp_file_left_by_kill_9_is_removed_by_the_next_run(tmp_path, tiny_checkpoint):
    imageio.write_image(tmp_path / "lr.png", (RNG.random((12, 12)) * 255).astype(np.uint8))
    imageio.write_image(tmp_path / "ref.png", (RNG.random((48, 48)) * 255).astype(np.uint8))
    left = _killed_mid_write(tmp_path / "out.png")
    assert len(left) == 1 and left[0].read_bytes() == b"half an image"
    assert not (tmp_path / "out.png").exists()
    env = dict(os.environ, PYTHONPATH=str(REPO), **{weights.CACHE_ENV: str(tmp_path / "cache")})
    proc = subprocess.run([sys.executable, "-m", "napari_refsr", "upscale", "lr.png", "ref.png", "-o", "out.png",
                           "--model", str(tiny_checkpoint), "-q"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob(".out.png.*")), "the stale temp file is still there"
    assert imageio.read_image(tmp_path / "out.png").shape == (48, 48)


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    """Only dead processes' leftovers go: a concurrent writer's temp file is not touched."""
    from napari_refsr.tempfiles import make_temp, remove_stale

    mine = make_temp(tmp_path / "x.tif")  # this (live) process
    left = _killed_mid_write(tmp_path / "x.tif")
    assert mine in left and len(left) == 2
    assert remove_stale(tmp_path / "x.tif") == [p for p in left if p != mine]
    assert mine.exists()
    torch.save({}, tmp_path / ".x.tif.unrelated.tmp")  # not one of ours: kept
    assert remove_stale(tmp_path / "x.tif") == [] and (tmp_path / ".x.tif.unrelated.tmp").exists()
