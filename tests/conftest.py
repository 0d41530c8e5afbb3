"""Shared fixtures: tiny TTSR models and checkpoints so every test runs in seconds on a CPU."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import threading

import numpy as np
import pytest
import torch

from napari_refsr.archs.ttsr import TTSR, TTSRConfig

TINY = dict(n_feats=8, num_res_blocks=(1, 1, 1, 1))


def tiny_network(seed: int = 0) -> TTSR:
    torch.manual_seed(seed)
    return TTSR(TTSRConfig(**TINY)).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A reference-format state dict (flat MainNet.*/LTE.* keys) of a tiny TTSR, saved to disk."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_network().state_dict(), path)
    return path


@pytest.fixture
def tiny_model(tiny_checkpoint):
    import napari_refsr

    return napari_refsr.load_model(tiny_checkpoint, device="cpu", cache=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def held_out_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(HR, reference) uint8 pairs from images the shipped default model never saw in training
    (training/sample_data.py VAL): the stereo pair's left view with the right view's same region
    as reference, and the held-out bottom third of the IHC slide with a neighbouring field."""
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    ihc = data.immunohistochemistry()
    bottom = ihc[ihc.shape[0] * 2 // 3:]
    return {
        "motorcycle": (left[150:342, 250:442], right[150:342, 200:456]),
        "ihc": (bottom[:168, :192], bottom[:168, 256:512]),
    }


def _reference_test_inputs(lr: np.ndarray, ref: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The reference TTSR's test() inputs, made with PIL as its code does: LR, LR↑ (bicubic ×4),
    Ref cropped to multiples of 4 and its ↓↑, each uint8 RGB → (1, 3, H, W) in [-1, 1]."""
    from PIL import Image

    h, w = lr.shape[:2]
    lr_up = np.array(Image.fromarray(lr).resize((w * 4, h * 4), Image.BICUBIC))
    rh, rw = ref.shape[0] // 4 * 4, ref.shape[1] // 4 * 4
    r = ref[:rh, :rw]
    r_du = np.array(Image.fromarray(r).resize((rw // 4, rh // 4), Image.BICUBIC).resize((rw, rh), Image.BICUBIC))
    return tuple(torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None] for a in (lr, lr_up, r, r_du))


@pytest.fixture(scope="session")
def reference_test_inputs():
    """:func:`_reference_test_inputs`, for tests that compare the pipeline with the reference's procedure."""
    return _reference_test_inputs


def _on_terminal(run):
    """Call ``run(fd)`` with ``fd`` a pseudo-terminal of 100 columns (to pass as stderr); return
    (run's result, the text drawn there)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = run(slave)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return result, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def on_terminal():
    """:func:`_on_terminal`: progress bars are drawn only when stderr is a terminal."""
    return _on_terminal


@pytest.fixture
def errors():
    """Error notifications napari shows while the test runs (napari tests only: imported lazily)."""
    from napari.utils.notifications import notification_manager

    seen = []

    def keep(event):
        note = event.value if hasattr(event, "value") else event
        if str(getattr(note, "severity", "")).lower().endswith("error"):
            seen.append(str(note.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)
