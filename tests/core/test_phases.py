"""Sub-pixel reference search (napari_refsr/phases.py): a reference whose content sits 2 px off
the LR grid is matched exactly only when its phase copies are searched too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_refsr as rs
from napari_refsr.archs.ttsr import TTSR, TTSRConfig
from napari_refsr.errors import RefSRError
from napari_refsr.phases import affordable_phases, feature_bytes, phase_offsets, phase_views, resolve_phases
from napari_refsr.resize import resize_uint8

OFFSET = (6, 10)  # where the HR lies in the reference: 2 px off the ×4 grid on both axes


@pytest.fixture(scope="module")
def shifted_pair():
    """An HR image, its LR, and a larger reference holding the HR at :data:`OFFSET`."""
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    scene = resize_uint8(big, (200, 200))  # smooth texture, PIL-exact bicubic
    y, x = 30, 30
    hr = scene[y : y + 128, x : x + 128]
    ref = scene[y - OFFSET[0] : y - OFFSET[0] + 160, x - OFFSET[1] : x - OFFSET[1] + 160]
    return hr, resize_uint8(hr, (32, 32)), ref


def test_offsets_and_views():
    assert phase_offsets(1) == [(0, 0)]
    assert phase_offsets(2) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert len(phase_offsets(4)) == 16
    views = phase_views(torch.zeros(3, 21, 18), 2)
    assert [(tuple(v.shape[-2:]), off) for v, off in views] == [
        ((20, 16), (0, 0)), ((20, 16), (0, 2)), ((16, 16), (2, 0)), ((16, 16), (2, 2))]
    assert [off for _, off in phase_views(torch.zeros(1, 4, 4), 4)] == [(0, 0)]  # no copy under 4×4 px
    for bad in (0, 3, 8, 2.0, True, "2"):
        with pytest.raises(RefSRError, match="phases must be one of 1, 2, 4"):
            phase_offsets(bad)
    with pytest.raises(ValueError, match="search_phases"):
        TTSRConfig(search_phases=3)


def test_phase_copies_find_the_exact_patch(tiny_model, shifted_pair):
    hr, lr, ref = shifted_pair
    plain = rs.upscale_detailed(tiny_model, lr, ref, device="cpu", phases=1)
    phased = rs.upscale_detailed(tiny_model, lr, ref, device="cpu", phases=2)
    inner = (slice(8, 24), slice(8, 24))  # LR pixels whose features see no image border
    rows, cols = np.mgrid[0:32, 0:32]
    src = phased.source[inner]
    # every inner LR pixel copies the 4×4 block of the reference that holds exactly its own HR block
    assert (src[..., 0] == 0).all()
    assert (src[..., 1] == rows[inner] * 4 + 2 + OFFSET[0]).all()
    assert (src[..., 2] == cols[inner] * 4 + 2 + OFFSET[1]).all()
    # on the LR grid alone no block lies there (the plain search lands 2 px away at best): lower S
    s_plain, s_phased = plain.confidence[32:96, 32:96], phased.confidence[32:96, 32:96]
    assert s_phased.min() > 0.999 and s_plain.mean() < s_phased.mean() - 0.002


def test_the_network_config_sets_the_default(tiny_model, shifted_pair):
    hr, lr, ref = shifted_pair
    explicit = rs.upscale_detailed(tiny_model, lr, ref, device="cpu", phases=2)
    tiny_model.network.config.search_phases = 2
    try:
        default = rs.upscale_detailed(tiny_model, lr, ref, device="cpu")
    finally:
        tiny_model.network.config.search_phases = 1
    np.testing.assert_array_equal(default.image, explicit.image)
    np.testing.assert_array_equal(default.source, explicit.source)


def test_a_default_that_would_not_fit_in_memory_is_reduced():
    small, mega = [(256, 256)], [(1024, 1024)]
    assert feature_bytes(small, 4) == 16 * feature_bytes(small, 1)
    assert affordable_phases(4, small) == 4  # 16 copies of 256² features: about 0.5 GB
    assert affordable_phases(4, mega) == 2  # 16 copies would need about 8.6 GB; 4 copies 2.1 GB
    assert affordable_phases(4, [(4096, 4096)]) == 1
    assert affordable_phases(4, mega, limit=10 * 2**30) == 4
    network = TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1), search_phases=4))
    assert resolve_phases(None, network, small) == 4 and resolve_phases(None, network, mega) == 2
    assert resolve_phases(4, network, mega) == 4  # asked for explicitly: not reduced
    with pytest.raises(RefSRError, match="phases must be one of"):
        resolve_phases(3, network, small)
