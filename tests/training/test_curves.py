"""curves.png: panels for the losses a run has, readable tick labels, enough points in short runs."""

from __future__ import annotations

from PIL import Image

from training import plot
from training.plot import log_interval, plot_curves, ticks


def _rows(steps, **losses):
    return [{"step": str(s), **{k: str(f(s)) for k, f in losses.items()}} for s in steps]


def test_rec_only_run_has_no_adversarial_panel(tmp_path):
    val = [{"step": "0", "psnr": "30.1", "psnr_bicubic": "29.0"}, {"step": "30", "psnr": "30.4", "psnr_bicubic": "29.0"}]
    keys = ("loss", "rec", "per", "adv", "d")
    rec_only = _rows(range(2, 31, 2), loss=lambda s: 1 / s, rec=lambda s: 1 / s)
    with Image.open(plot_curves(tmp_path / "rec.png", rec_only, val, keys)) as im:
        two_panels = im.size
    full = _rows(range(2, 31, 2), loss=lambda s: 1 / s, rec=lambda s: 1 / s, adv=lambda s: -s, d=lambda s: s)
    with Image.open(plot_curves(tmp_path / "full.png", full, val, keys)) as im:
        three_panels = im.size
    assert two_panels == (900, 640) and three_panels == (900, 900)


def test_tick_labels_are_distinct():
    for lo, hi in ((1, 2), (1, 3), (2, 30), (0, 3360), (17, 23)):
        values = ticks(lo, hi, integer=True)
        assert values and all(v == int(v) and lo <= v <= hi for v in values), (lo, hi, values)
        assert len(set(plot._labels(values))) == len(values)
    assert ticks(0, 3360, integer=True) == [0, 1000, 2000, 3000]
    # close values on a loss axis get the digits that tell them apart
    assert len(set(plot._labels([0.01231, 0.01234, 0.01237]))) == 3


def test_short_runs_log_often_enough_for_a_curve():
    assert log_interval(10, 30) == 2 and log_interval(20, 30) == 2  # 15 rows instead of 3 or 1
    assert log_interval(20, 3360) == 20 and log_interval(1, 2) == 1 and log_interval(10, 0) == 1
