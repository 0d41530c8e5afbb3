"""The confidence map: S at output size stays a cosine (never above 1), and its 8-bit picture shows
contrast through the documented angle mapping."""

from __future__ import annotations

import numpy as np
import torch

import napari_refsr
from napari_refsr.confidence import MIN_ANGLE, display_window, to_uint8, upsample_confidence
from napari_refsr.resize import resize_bicubic


def _step_map() -> np.ndarray:
    """A perfect-match block next to a poorer one: where bicubic upsampling overshoots."""
    s = np.full((12, 12), 0.7, np.float32)
    s[3:9, 3:9] = 1.0
    return s


def test_upsampling_stays_within_the_values_it_interpolates():
    s = _step_map()
    bicubic = resize_bicubic(torch.from_numpy(s), (48, 48)).numpy()
    assert bicubic.max() > 1.01  # why not bicubic: it invents S above a perfect match
    up = upsample_confidence(s, 4)
    assert up.shape == (48, 48) and up.dtype == np.float32
    assert up.max() == 1.0 and up.min() == np.float32(0.7)
    assert np.isclose(up[20:28, 20:28], 1.0).all() and np.isclose(up[:4, :4], 0.7).all()
    # float rounding above 1 (a cosine of 1.0000013) is clipped
    assert upsample_confidence(np.full((2, 2), 1.0000013, np.float32), 4).max() == 1.0


def test_pipeline_confidence_is_a_cosine_at_most_one(tiny_model, rng):
    ref = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    lr = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(ref).permute(2, 0, 1)[None].float(), 4)
                    [0].permute(1, 2, 0).round().byte())
    lr[8:, :] = (rng.random((8, 16, 3)) * 255).astype(np.uint8)  # half of it has no counterpart
    res = napari_refsr.upscale_detailed(tiny_model, lr, ref, device="cpu")
    conf = res.confidence
    assert conf.shape == (64, 64) and conf.dtype == np.float32
    assert -1.0 <= conf.min() and conf.max() <= 1.0
    assert conf.max() - conf.min() > 0.01  # a real map


def test_8bit_picture_maps_the_angle_from_white_to_black():
    s = upsample_confidence(_step_map(), 4)
    image, window = to_uint8(s)
    assert image.dtype == np.uint8 and image.max() == 255 and image.min() == 0
    assert np.isclose(window.max_angle, np.degrees(np.arccos(0.7)), atol=1e-3)
    assert np.isclose(window.lowest, 0.7, atol=1e-5)
    # the documented formula, and it can be inverted to S within one grey level
    theta = np.degrees(np.arccos(np.clip(s.astype(np.float64), -1, 1)))
    np.testing.assert_array_equal(image, np.round((1 - theta / window.max_angle) * 255).astype(np.uint8))
    back = np.cos(np.radians(window.max_angle * (1 - image / 255.0)))
    step = np.sin(np.radians(window.max_angle)) * np.radians(window.max_angle) / 255
    assert np.abs(back - s).max() <= step
    assert "arccos(S)" in window.describe() and "0.700" in window.describe()
    # brighter = a better match
    order = np.argsort(s.ravel(), kind="stable")
    assert (np.diff(image.ravel()[order].astype(int)) >= 0).all()


def test_cosines_near_one_get_contrast_a_constant_map_stays_white():
    s = np.array([[1.0, 0.9999, 0.999], [0.99, 0.98, 0.95]], np.float32)
    image, _ = to_uint8(s)
    naive = np.round(s * 255)
    assert naive.min() >= 240 and len(np.unique(naive)) == 4  # S·255: near-white, two pairs merged
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) == 6
    flat, window = to_uint8(np.full((4, 4), 0.99999, np.float32))
    assert window.max_angle == MIN_ANGLE and flat.min() >= 240
    assert display_window(np.array([np.nan, 1.0])).max_angle == MIN_ANGLE
