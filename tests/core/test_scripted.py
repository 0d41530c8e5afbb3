"""The TorchScript module of a network (bioimage.io ``torchscript`` weights) computes what the
eager two-input wrapper computes, for both architectures, grayscale and RGB, at sizes and batch
sizes other than the ones its parts were traced with (a plain trace would hold for one size)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY

from napari_refsr.archs.scripted import script_two_input
from napari_refsr.archs.srntt import SRNTT, SRNTTConfig
from napari_refsr.archs.ttsr import TTSR, TTSRConfig
from napari_refsr.archs.two_input import TwoInputSR


def _network(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "srntt":
        return SRNTT(SRNTTConfig(n_feats=8, content_blocks=1, transfer_blocks=(1, 1, 1))).eval()
    return TTSR(TTSRConfig(global_skip=kind == "ttsr global skip", **TINY)).eval()


@pytest.mark.parametrize("kind, channels", [("ttsr", 3), ("ttsr global skip", 1), ("srntt", 1)])
def test_scripted_equals_the_eager_network_at_any_size(kind, channels, tmp_path):
    net = _network(kind)
    scripted = script_two_input(net, channels)
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    eager = TwoInputSR(net, channels).eval()
    g = torch.Generator().manual_seed(0)
    for n, lr_size, ref_size in [(1, (16, 16), (64, 64)), (2, (20, 36), (70, 50))]:  # 70×50: cropped to 68×48
        lr = torch.rand(n, channels, *lr_size, generator=g)
        ref = torch.rand(n, channels, *ref_size, generator=g)
        with torch.no_grad():
            expected, got = eager(lr, ref), loaded(lr, ref)
        assert got.shape == (n, channels, lr_size[0] * 4, lr_size[1] * 4)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_scripted_refuses_wrong_channels():
    scripted = script_two_input(_network("ttsr"), 1)
    with pytest.raises(Exception, match="channels"):
        scripted(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32))
