"""Training references that carry the content: the overlap / similar / unrelated mixture of plain
folders, and evaluation with each kind of reference (training/reference_views.py, training/data.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from napari_refsr.errors import RefSRError
from training import evaluate
from training.checkpoints import export_model
from training.config import check_config, load_config
from training.data import FolderTrainSet, eval_items
from training.data.references import ReferenceMix, covered_fraction, overlap_box

from test_training import read_csv, texture, write_png

# an overlapping view without any change: the crop must appear in it as it is
PLAIN_VIEW = dict(overlap=1.0, similar=0.0, unrelated=0.0, coverage=[1.0, 1.0], scale=[1.0, 1.0], rotate=0.0,
                  gamma=[1.0, 1.0], gain=[1.0, 1.0], offset=[0.0, 0.0], colour=0.0, blur=[0.0, 0.0],
                  noise=[0.0, 0.0])


def best_correlation(crop: torch.Tensor, ref: torch.Tensor) -> float:
    """Highest normalised cross-correlation of ``crop`` (C, h, w) over every placement in ``ref``."""
    c = crop - crop.mean()
    windows = ref.unfold(1, crop.shape[1], 1).unfold(2, crop.shape[2], 1)  # (C, Y, X, h, w)
    windows = windows - windows.mean(dim=(0, 3, 4), keepdim=True)
    num = (windows * c[:, None, None]).sum(dim=(0, 3, 4))
    den = windows.pow(2).sum(dim=(0, 3, 4)).sqrt() * c.pow(2).sum().sqrt()
    return float((num / den.clamp_min(1e-9)).max())


@pytest.fixture
def two_images(tmp_path):
    """Two 2D images of clearly different brightness: a dark one and a bright one."""
    folder = tmp_path / "imgs"
    write_png(folder / "dark.png", texture(96, 128, seed=1) * 0.35)
    write_png(folder / "bright.png", 0.65 + texture(96, 128, seed=2) * 0.35)
    return folder


def test_overlapping_view_holds_the_crop_and_unrelated_comes_from_another_image(two_images):
    ds = FolderTrainSet(two_images, crop=32, seed=1, flip=True, rot90=True, references=ReferenceMix(**PLAIN_VIEW))
    assert ds.ref_pad == 48  # 1.5 × crop by default: references larger than the crop, as TTSR's
    for i in range(6):
        s = ds[i]
        assert s["ref"].shape == (3, 48, 48) and s["ref"].min() >= -1 and s["ref"].max() <= 1
        # the same flips / quarter turns as the crop: the crop is found in the view as it is
        assert best_correlation(s["hr"], s["ref"]) > 0.97
    similar = FolderTrainSet(two_images, crop=32, seed=1, references=ReferenceMix.similar_only())
    assert max(best_correlation(similar[i]["hr"], similar[i]["ref"]) for i in range(6)) < 0.97

    unrelated = FolderTrainSet(two_images, crop=32, seed=1, references=ReferenceMix(overlap=0, similar=0,
                                                                                       unrelated=1))
    for i in range(len(unrelated)):
        s = unrelated[i]
        hr_bright, ref_bright = float(s["hr"].mean()) > 0, float(s["ref"][:, :32, :32].mean()) > 0
        assert hr_bright != ref_bright  # always the other image


def test_overlapping_view_changes_exposure_geometry_and_noise(two_images):
    changed = dict(PLAIN_VIEW, gamma=[0.5, 0.5], gain=[1.0, 1.0])
    plain = FolderTrainSet(two_images, crop=32, seed=4, flip=False, rot90=False, references=ReferenceMix(**PLAIN_VIEW))
    darker = FolderTrainSet(two_images, crop=32, seed=4, flip=False, rot90=False, references=ReferenceMix(**changed))
    a, b = plain[0], darker[0]
    assert torch.equal(a["hr"], b["hr"])
    assert float(((b["ref"] + 1) / 2).mean()) > float(((a["ref"] + 1) / 2).mean()) + 0.05  # gamma 0.5 brightens
    rotated = FolderTrainSet(two_images, crop=32, seed=4, flip=False, rot90=False,
                             references=ReferenceMix(**dict(PLAIN_VIEW, rotate=25.0, scale=[1.25, 1.25])))
    r = rotated[0]
    assert best_correlation(r["hr"], r["ref"]) < best_correlation(a["hr"], a["ref"])
    noisy = FolderTrainSet(two_images, crop=32, seed=4, flip=False, rot90=False,
                           references=ReferenceMix(**dict(PLAIN_VIEW, noise=[0.05, 0.05])))
    diff = (noisy[0]["ref"] - a["ref"]) / 2
    assert 0.03 < float(diff.std()) < 0.07
    # a grayscale image stays gray under the per-channel colour change
    gray_dir = two_images.parent / "gray"
    gray_dir.mkdir()
    Image.fromarray((texture(96, 128, seed=3, channels=1)[..., 0] * 255).round().astype(np.uint8)).save(gray_dir / "g.png")
    g = FolderTrainSet(gray_dir, crop=32, seed=2, references=ReferenceMix(**dict(PLAIN_VIEW, colour=0.3)))[0]["ref"]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])


def test_overlap_box_covers_the_asked_share():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo = float(rng.uniform(0.3, 0.9))
        cov = [lo, min(1.0, lo + 0.2)]
        crop = (int(rng.integers(0, 100)), int(rng.integers(0, 150)), 32, 32)
        side = float(rng.uniform(40, 70))
        cy, cx = overlap_box(200, 250, crop, side, cov, rng)
        assert side / 2 <= cy <= 200 - side / 2 and side / 2 <= cx <= 250 - side / 2
        assert cov[0] - 1e-9 <= covered_fraction(crop, (cy, cx, side)) <= cov[1] + 1e-9


def exact_offset(crop: torch.Tensor, ref: torch.Tensor) -> tuple[int, int] | None:
    """Where ``crop`` (C, h, w) appears unchanged in ``ref``, if it does."""
    windows = ref.unfold(1, crop.shape[1], 1).unfold(2, crop.shape[2], 1)  # (C, Y, X, h, w)
    err = (windows - crop[:, None, None]).abs().amax(dim=(0, 3, 4))
    y, x = divmod(int(err.argmin()), err.shape[1])
    return (y, x) if float(err[y, x]) < 1e-4 else None


def test_aligned_views_hold_the_crop_unchanged_on_its_lr_grid(two_images):
    """``aligned`` views skip scale and rotation and sit a whole number of LR pixels from the crop
    (flips and quarter turns included), so the texture search can find the exact patch."""
    jittered = dict(PLAIN_VIEW, scale=[0.8, 1.25], rotate=10.0)
    ds = FolderTrainSet(two_images, crop=32, seed=5, flip=True, rot90=True,
                        references=ReferenceMix(**jittered, aligned=1.0))
    offsets = [exact_offset(ds[i]["hr"], ds[i]["ref"]) for i in range(12)]
    assert all(o is not None and o[0] % 4 == 0 and o[1] % 4 == 0 for o in offsets), offsets
    assert len(set(offsets)) > 1  # at a random offset, not always the same place
    plain = FolderTrainSet(two_images, crop=32, seed=5, flip=True, rot90=True, references=ReferenceMix(**jittered))
    assert sum(exact_offset(plain[i]["hr"], plain[i]["ref"]) is not None for i in range(12)) <= 2


def test_mixture_draws_each_kind_at_its_rate_and_bad_settings_are_refused():
    mix = ReferenceMix(overlap=0.5, similar=0.3, unrelated=0.2)
    rng = np.random.default_rng(0)
    kinds = [mix.draw_kind(rng) for _ in range(4000)]
    for kind, p in (("overlap", 0.5), ("similar", 0.3), ("unrelated", 0.2)):
        assert abs(kinds.count(kind) / 4000 - p) < 0.03
    with pytest.raises(RefSRError, match="overlap/similar/unrelated"):
        ReferenceMix(overlap=0, similar=0, unrelated=0)
    with pytest.raises(RefSRError, match="scale"):
        ReferenceMix(scale=[1.2, 0.8])
    with pytest.raises(RefSRError, match="coverage"):
        ReferenceMix(coverage=[0.0, 1.5])
    with pytest.raises(RefSRError, match="aligned"):
        ReferenceMix(aligned=1.5)
    cfg = load_config(None, ["data.reference.overlap=-1"])
    with pytest.raises(RefSRError, match="overlap/similar/unrelated"):
        check_config(cfg)
    cfg = load_config(None, ["data.reference.size=50"])
    with pytest.raises(RefSRError, match="multiple of 4"):
        check_config(cfg)
    with pytest.raises(RefSRError, match="unknown config key"):
        load_config(None, ["data.reference.ovelrap=1"])


def test_evaluation_with_every_kind_of_reference(tmp_path, capsys):
    from napari_refsr.archs.ttsr import TTSR, TTSRConfig

    folder = tmp_path / "val"
    write_png(folder / "a.png", texture(48, 96, seed=3))
    write_png(folder / "b.png", texture(96, 48, seed=4) * 0.5)
    similar = {it.name: it for it in eval_items(folder)}
    overlap = {it.name: it for it in eval_items(folder, reference="overlap")}
    unrelated = {it.name: it for it in eval_items(folder, reference="unrelated")}
    for name in ("a", "b"):
        assert torch.equal(similar[name].hr, overlap[name].hr)  # the same held-out half: bicubic compares
        cov = overlap[name].covered
        assert cov.shape == similar[name].hr.shape[1:] and abs(float(cov.float().mean()) - 0.75) < 0.05
        # the overlapping reference shows the covered part of the HR (a 10 % larger, re-exposed view)
        assert overlap[name].refs[0].shape[-1] > similar[name].hr.shape[-1] * 0.8
    assert torch.equal(unrelated["a"].refs[0], similar["b"].refs[0])
    assert torch.equal(unrelated["b"].refs[0], similar["a"].refs[0])
    with pytest.raises(RefSRError, match="reference must be one of"):
        eval_items(folder, reference="best")

    torch.manual_seed(0)
    model_path = export_model(TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1))), tmp_path / "m.pt")
    csv_path = tmp_path / "res.csv"
    assert evaluate.main(["--model", str(model_path), "--data", str(folder), "--refs", "overlap", "similar",
                          "unrelated", "uninformative", "--csv", str(csv_path)]) == 0
    printed = capsys.readouterr().out
    assert "S in" in printed and "overlap" in printed
    means = {(r["method"], r["reference"]): r for r in read_csv(csv_path) if r["image"] == "mean"}
    assert set(means) == {("bicubic", "-"), ("m.pt", "overlap"), ("m.pt", "similar"), ("m.pt", "unrelated"),
                          ("m.pt (ref = LR↑)", "LR↑")}
    s_in, s_out = float(means[("m.pt", "overlap")]["s_in"]), float(means[("m.pt", "overlap")]["s_out"])
    assert math.isfinite(s_in) and math.isfinite(s_out)
    assert means[("m.pt", "similar")]["s_in"] == ""  # only the overlapping reference says where it matches
    psnr = {k: float(v["psnr"]) for k, v in means.items()}
    assert len(set(psnr.values())) == len(psnr)  # every kind of reference changes the output
