"""Shared fixtures: tiny TTSR models and checkpoints so every test runs in seconds on a CPU."""

from __future__ import annotations

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
