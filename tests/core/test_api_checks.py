"""Bad arguments to the Python API become one RefSRError naming the value; outputs are finite.

(issue 14, items 5 and 8) A caller's mistake must not surface as a numpy/torch TypeError deep
inside, be accepted and give silently wrong intensities, or crawl for minutes; a network that
produces NaN must not hand back an all-black image.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import napari_refsr as rs
from napari_refsr import RefSRError, weights

RNG = np.random.default_rng(3)
LR = (RNG.random((16, 16)) * 4000).astype(np.uint16)
REF = (RNG.random((64, 64)) * 4000).astype(np.uint16)


@pytest.mark.parametrize("options, named", [
    (dict(tile="64"), "'64'"),
    (dict(tile=None), "None"),
    (dict(tile=64.0), "64.0"),
    (dict(tile=True), "True"),
    (dict(tile=8), "8"),
    (dict(overlap=-5), "-5"),
    (dict(overlap=64, tile=64), "64"),
    (dict(overlap="16"), "'16'"),
    (dict(device=123), "123"),
    (dict(device="gpu0"), "gpu0"),
    (dict(percentiles=(99, 1)), "(99, 1)"),
    (dict(percentiles=(1, 101)), "101"),
    (dict(percentiles=(float("nan"), 50)), "nan"),
    (dict(percentiles=5), "5"),
    (dict(value_range=(1.0, 1.0)), "(1.0, 1.0)"),
    (dict(value_range=(0, float("inf"))), "inf"),
    (dict(search_budget=0), "0"),
    (dict(search_budget=1024), "1024"),
    (dict(search_budget="big"), "'big'"),
    (dict(progress="yes"), "'yes'"),
    (dict(cancel=1), "1"),
])
def test_bad_options_are_refsr_errors_naming_the_value(tiny_model, options, named):
    with pytest.raises(RefSRError, match=None) as info:
        rs.upscale_nd(tiny_model, LR, REF, **options)
    assert named in str(info.value), str(info.value)


@pytest.mark.parametrize("data, named", [
    (np.zeros((0, 16, 16), np.uint16), "(0, 16, 16)"),
    (np.zeros((2, 0, 16), np.uint16), "(2, 0, 16)"),
    (None, "None"),
])
def test_empty_or_missing_images_are_refsr_errors(tiny_model, data, named):
    with pytest.raises(RefSRError) as info:
        rs.upscale_nd(tiny_model, data, REF)
    assert named in str(info.value)


@pytest.mark.parametrize("model", [None, 42, ""])
def test_a_model_that_is_not_one_is_refused(model):
    with pytest.raises(RefSRError, match="model must be"):
        rs.upscale(model, LR, REF, device="cpu")


def test_a_model_given_by_path_or_name_is_loaded(tiny_model, tiny_checkpoint):
    expected = rs.upscale(tiny_model, LR, REF, device="cpu")
    np.testing.assert_array_equal(rs.upscale(str(tiny_checkpoint), LR, REF, device="cpu"), expected)
    np.testing.assert_array_equal(rs.upscale(tiny_checkpoint, LR, REF, device="cpu"), expected)
    by_name = rs.upscale(rs.DEFAULT_MODEL, LR[:8, :8], REF[:32, :32], device="cpu")  # the shipped model
    assert by_name.shape == (32, 32) and by_name.dtype == np.uint16


def test_valid_edge_values_are_accepted(tiny_model):
    out = rs.upscale_nd(tiny_model, LR, REF, tile=np.int64(32), overlap=0, percentiles=(0, 100),
                        search_budget=rs.options.MIN_SEARCH_BUDGET, device=torch.device("cpu"))
    assert out.image.shape == (64, 64)


# ------------------------------------------------------------------------------ finite outputs (5)


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path):
    from conftest import TINY, tiny_network

    state = tiny_network().state_dict()
    state["MainNet.conv11_head.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    weights.save_checkpoint(path, state, dict(TINY, arch="ttsr"))
    with pytest.raises(RefSRError, match="NaN or infinite") as info:
        rs.load_model(path, device="cpu", cache=False)
    assert "MainNet." in str(info.value)


def test_a_network_that_produces_nan_is_an_error_not_a_black_image(tiny_model):
    import copy

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for name, p in broken.network.named_parameters():
            if name.startswith("MainNet.SFE.conv_head"):
                p.fill_(float("inf"))
    with pytest.raises(RefSRError, match="NaN or infinite"):
        rs.upscale(broken, LR, REF, device="cpu")


@pytest.mark.parametrize("dtype, peak", [(np.float32, 3e38), (np.float64, 1.5e308)])
def test_float_data_near_its_limit_gives_finite_proportional_output(tiny_model, dtype, peak):
    """±3e38 would overflow a float32 window (hi - lo = inf), ±1.5e308 even a float64 one: the result
    must be the image of the data scaled down, scaled back up — finite, and no numpy warnings."""
    small = RNG.random((16, 16)) * 2 - 1
    ref_small = RNG.random((64, 64)) * 2 - 1
    big, ref_big = (small * peak).astype(dtype), (ref_small * peak).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out_big = rs.upscale(tiny_model, big, ref_big, device="cpu")
    out_small = rs.upscale(tiny_model, (big.astype(np.float64) / peak).astype(dtype),
                           (ref_big.astype(np.float64) / peak).astype(dtype), device="cpu")
    assert out_big.dtype == dtype and np.isfinite(out_big).all()
    np.testing.assert_allclose(out_big.astype(np.float64) / peak, out_small, rtol=1e-3, atol=1e-4)
