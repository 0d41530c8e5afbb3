"""Training front end: data, losses, a few real optimisation steps, kill + resume, DDP, evaluation.

Everything runs on CPU with a tiny TTSR (n_feats 8, one residual block per stage), 32 px crops
and random VGG19 weights (``model.vgg_weights=null``), on small images written as real PNG/TIFF
files. The resume and DDP tests start ``training/train.py`` in subprocesses (killed / torchrun).
SRNTT (``--model srntt``) runs the same way with a tiny network and a VGG19 file of random
He-initialised weights, so that its matching space and VGG losses have realistic magnitudes.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import napari_refsr as rs
from napari_refsr import weights
from napari_refsr.archs.srntt import SRNTT, SRNTTConfig
from napari_refsr.archs.ttsr import LTE, TTSR, TTSRConfig
from napari_refsr.errors import RefSRError
from napari_refsr.resize import resize_bicubic
from napari_refsr.weights import read_checkpoint
from training import evaluate, train
from training.checkpoints import CheckpointManager, atomic_torch_save, load_training_checkpoint
from training.config import ARCH_DEFAULTS, DEFAULTS, check_config, load_config, network_config
from training.checkpoints import export_model
from training.data import CUFEDTrainSet, Degradation, FolderTrainSet, build_train_set, eval_items, list_images
from training.data.references import ReferenceMix
from training.data.trainsets import _split_crop
from training.losses import Discriminator, TextureLoss, WGANGP, gram_matrix, reconstruction_loss
from napari_refsr.archs.vgg import VGG19Features

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "training" / "train.py"
TINY = ["model.n_feats=8", "model.num_res_blocks=[1,1,1,1]", "model.vgg_weights=null", "data.crop=32",
        "data.min_ref=16", "data.workers=0", "train.batch=2", "train.threads=1", "run.progress=false"]
TINY_SRNTT = ["--model", "srntt", "model.n_feats=8", "model.content_blocks=1", "model.transfer_blocks=[1,1,1]",
              "data.crop=32", "data.min_ref=16", "data.workers=0", "train.batch=2", "train.threads=1",
              "run.progress=false"]


def texture(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    """Smooth random texture in [0, 1], (h, w, channels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, channels))
    for c in range(channels):
        for _ in range(4):
            fy, fx = rng.uniform(0.05, 0.5, 2)
            img[..., c] += np.sin(fy * y + fx * x + rng.uniform(0, 6))
    img -= img.min()
    return img / img.max()


def write_png(path: Path, img01: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.round(img01 * 255).astype(np.uint8)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return path


def make_folder(root: Path, n: int = 2, size=(40, 72)) -> Path:
    for i in range(n):
        write_png(root / f"img{i}.png", texture(*size, seed=i))
    return root


def run_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def two_logged_steps(out: Path, keys: tuple[str, ...]) -> list[dict]:
    """The run's log.csv rows: steps 1 and 2, with every one of ``keys`` finite in each."""
    rows = read_csv(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    for r in rows:
        for key in keys:
            assert math.isfinite(float(r[key])), (key, r)
    return rows


def evaluate_reproduces_last_validation(out: Path, val: Path, last: dict, csv_path: Path) -> dict[str, float]:
    """evaluate.py on the run's export and best.pt: the export's mean PSNR and bicubic's equal
    the last row of val.csv. Returns mean PSNR by method."""
    assert evaluate.main(["--model", str(out / "model.pt"), "--model", str(out / "checkpoints" / "best.pt"),
                          "--data", str(val), "--csv", str(csv_path)]) == 0
    means = {r["method"]: float(r["psnr"]) for r in read_csv(csv_path) if r["image"] == "mean"}
    assert abs(means["model.pt"] - float(last["psnr"])) < 1e-3
    assert abs(means["bicubic"] - float(last["psnr_bicubic"])) < 1e-3
    return means


def assert_same_state(a, b, where="state"):
    """Recursively equal: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One thread per process (the machine's few cores are shared); the old count comes back after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """A torchvision-VGG19-shaped .pth up to relu5_1 with random He-initialised weights (features
    keep their scale through the layers, unlike PyTorch's default init, whose Gram matrices
    underflow float32 by relu3_1)."""
    g = torch.Generator().manual_seed(21)
    state = {}
    for name, tensor in VGG19Features(None).features.state_dict().items():
        key = f"features.{name}"
        if name.endswith("weight"):
            state[key] = torch.randn(tensor.shape, generator=g) * math.sqrt(2.0 / (tensor.shape[1] * 9))
        else:
            state[key] = torch.zeros(tensor.shape)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(state, path)
    return path


RUN_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "discriminator", "optimizer_d", "step", "epoch",
                  "epoch_step")


# ----------------------------------------------------------------------------- config


def test_configs_paper_defaults_and_rec_only_flag(tmp_path):
    ttsr = load_config(REPO / "training" / "configs" / "ttsr.yaml")
    assert ttsr["loss"] == DEFAULTS["loss"]
    assert (ttsr["loss"]["rec"], ttsr["loss"]["per"], ttsr["loss"]["tpl"], ttsr["loss"]["adv"]) == (1.0, 1e-2, 1e-2, 1e-3)
    assert (ttsr["optim"]["lr"], ttsr["optim"]["lr_lte"], ttsr["optim"]["betas_dis"]) == (1e-4, 1e-5, [0.0, 0.9])
    assert (ttsr["train"]["batch"], ttsr["train"]["init_epochs"], ttsr["train"]["epochs"]) == (9, 2, 50)
    rec = load_config(REPO / "training" / "configs" / "ttsr-rec.yaml")
    assert (rec["loss"]["per"], rec["loss"]["tpl"], rec["loss"]["adv"], rec["train"]["init_epochs"]) == (0, 0, 0, 0)
    # the one flag gives the same objective, and overrides apply after the file
    args = train.parse_args(["train.batch=3", "--config", str(REPO / "training/configs/ttsr.yaml"), "--rec-only",
                             "data.noise=[0, 0.02]"])
    cfg = train.build_config(args)
    assert {k: cfg["loss"][k] for k in ("per", "tpl", "adv")} == {"per": 0, "tpl": 0, "adv": 0}
    assert cfg["train"]["init_epochs"] == 0 and cfg["train"]["batch"] == 3 and cfg["data"]["noise"] == [0, 0.02]
    with pytest.raises(RefSRError, match="unknown config key"):
        load_config(None, ["loss.advv=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(RefSRError, match="lrr"):
        load_config(bad)


# ----------------------------------------------------------------------------- data


def test_folder_dataset_samples_2d_stack_and_paired(tmp_path):
    # 2D RGB PNG: HR and reference are non-overlapping crops of the same image
    folder = make_folder(tmp_path / "rgb", n=1, size=(40, 72))
    ds = FolderTrainSet(folder, crop=32, min_ref=16, seed=3, references=ReferenceMix.similar_only())
    s = ds[0]
    assert {k: tuple(v.shape) for k, v in s.items()} == {
        "lr": (3, 8, 8), "lr_up": (3, 32, 32), "hr": (3, 32, 32), "ref": (3, 32, 32), "ref_down_up": (3, 32, 32)}
    assert all(v.dtype == torch.float32 and v.min() >= -1 and v.max() <= 1 for v in s.values())
    # LR / LR↑ are the core's PIL-exact bicubic of the (8-bit) HR crop
    hr255 = (s["hr"] + 1) * 127.5
    lr = resize_bicubic(hr255, (8, 8), quantize=True)
    assert torch.allclose((s["lr"] + 1) * 127.5, lr, atol=1e-3)
    assert torch.allclose((s["lr_up"] + 1) * 127.5, resize_bicubic(lr, (32, 32), quantize=True), atol=1e-3)
    # same (seed, epoch, index) → same sample; another epoch → another crop
    assert all(torch.equal(s[k], ds[0][k]) for k in s)
    ds.set_epoch(1)
    assert not torch.equal(s["hr"], ds[0]["hr"])
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = int(rng.integers(32, 90)), int(rng.integers(32, 90))
        if max(h, w) < 48:
            continue
        y, x, (ry, rx, rh, rw) = _split_crop(h, w, 32, 16, rng)
        assert 0 <= y <= h - 32 and 0 <= x <= w - 32 and ry >= 0 and rx >= 0 and ry + rh <= h and rx + rw <= w
        assert rh >= 16 and rw >= 16 and rh % 4 == 0 and rw % 4 == 0
        assert ry >= y + 32 or ry + rh <= y or rx >= x + 32 or rx + rw <= x  # disjoint boxes

    # 16-bit grayscale stack: the reference is a neighbouring slice (frames differ by intensity)
    base = texture(36, 36, seed=5, channels=1)[..., 0] * 2000
    stack = np.stack([base + 20000 * z for z in range(3)]).astype(np.uint16)
    (tmp_path / "stack").mkdir()
    tifffile.imwrite(tmp_path / "stack" / "s.tif", stack, photometric="minisblack")
    ds = FolderTrainSet(tmp_path / "stack", crop=32, min_ref=16, flip=False, rot90=False,
                        references=ReferenceMix.similar_only())
    assert len(ds) == 3  # one 32 px crop per 36×36 frame
    for i in range(len(ds)):
        s = ds[i]
        assert torch.equal(s["hr"][0], s["hr"][1]) and torch.equal(s["hr"][0], s["hr"][2])  # gray → RGB
        level = abs(float(s["ref"].mean() - s["hr"].mean()))
        assert 0.6 < level < 1.2  # exactly one slice apart (20000 of ~42000 intensity window ≈ 0.95)

    # paired reference folder: same file name, the reference's own content
    write_png(tmp_path / "pairs" / "a.png", texture(40, 40, seed=1))
    write_png(tmp_path / "pairs_ref" / "a.png", np.zeros((40, 40, 3)))
    ds = FolderTrainSet(tmp_path / "pairs", ref_dir=tmp_path / "pairs_ref", crop=32)
    assert float(ds[0]["ref"].max()) == -1.0 and float(ds[0]["hr"].max()) > -1.0

    # degradation: noise changes LR, blur smooths it
    ds_clean = FolderTrainSet(folder, crop=32, min_ref=16, seed=3)
    ds_noisy = FolderTrainSet(folder, crop=32, min_ref=16, seed=3, degradation=Degradation(blur=1.5, noise=0.05))
    a, b = ds_clean[0], ds_noisy[0]
    assert torch.equal(a["hr"], b["hr"]) and not torch.equal(a["lr"], b["lr"])


def test_cufed_layout_pads_small_references(tmp_path):
    root = tmp_path / "CUFED"
    for i in range(2):
        write_png(root / "train" / "input" / f"{i:06d}.png", texture(32, 32, seed=i))
        write_png(root / "train" / "ref" / f"{i:06d}.png", texture(20, 28, seed=10 + i))
    ds = build_train_set(dict(DEFAULTS["data"], train=str(root), crop=32))
    assert isinstance(ds, CUFEDTrainSet) and len(ds) == 2
    s = ds[0]
    assert s["ref"].shape == (3, 32, 32)
    # the 20×28 reference (or 28×20 after rotation) sits in a black (-1) zero-padded frame
    content = (s["ref"] > -1).any(0)
    assert content.sum() <= 20 * 28 and bool((s["ref"][:, 28:, 28:] == -1).all())


def test_bad_data_folders_give_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(RefSRError, match="holds no images"):
        list_images(empty)
    with pytest.raises(RefSRError, match="not found"):
        FolderTrainSet(tmp_path / "missing", crop=32)
    broken = tmp_path / "broken"
    make_folder(broken, n=1)
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(RefSRError, match="bad.png"):
        FolderTrainSet(broken, crop=32, min_ref=16)
    small = tmp_path / "small"
    write_png(small / "tiny.png", texture(20, 20, seed=0))
    with pytest.raises(RefSRError, match="no usable training image.*tiny.png"):
        FolderTrainSet(small, crop=32)
    cufed = tmp_path / "cufed"
    write_png(cufed / "train" / "input" / "000001.png", texture(32, 32, seed=0))
    write_png(cufed / "train" / "ref" / "000002.png", texture(32, 32, seed=1))
    with pytest.raises(RefSRError, match="no reference of the same name.*000001.png"):
        CUFEDTrainSet(cufed, crop=32)
    pairs = make_folder(tmp_path / "pairs", n=1)
    write_png(tmp_path / "pairs_ref" / "other.png", texture(40, 40, seed=1))
    with pytest.raises(RefSRError, match="no reference for .*img0.png"):
        FolderTrainSet(pairs, ref_dir=tmp_path / "pairs_ref", crop=32)
    # through the command line: exit status 2 and a one-line message, no traceback, no run files
    rc = train.main(["--data", str(empty), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "holds no images" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(RefSRError, match="multiple of 32"):
        check_config(load_config(None, ["data.crop=48"]))


# ----------------------------------------------------------------------------- losses


def test_vgg_features_and_wgan_gp():
    torch.manual_seed(0)
    vgg = VGG19Features(None)
    state = {f"features.{k}": torch.randn_like(v) for k, v in vgg.features.state_dict().items()}
    assert sorted(state) == sorted(VGG19Features.weight_names())
    vgg = VGG19Features(state)
    assert torch.equal(vgg.features[28].weight, state["features.28.weight"])  # conv5_1 loaded by index
    assert vgg((torch.rand(1, 3, 32, 32))).shape == (1, 512, 2, 2)  # relu5_1: /16, 512 channels
    assert not any(p.requires_grad for p in vgg.parameters())
    with pytest.raises(RefSRError, match="features"):
        VGG19Features({"features.0.weight": state["features.0.weight"]})
    D = Discriminator(32)
    assert Discriminator(160).fc1.in_features == 12800 and D.fc1.in_features == 512 and sum(isinstance(m, torch.nn.Conv2d) for m in D.modules()) == 10
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))
    gan = WGANGP(D, opt, k=2, gp=10.0)
    before = [p.clone() for p in D.parameters()]
    real, fake = torch.rand(2, 3, 32, 32) * 2 - 1, torch.zeros(2, 3, 32, 32, requires_grad=True)
    d_loss = gan.discriminator_steps(fake, real)
    assert math.isfinite(d_loss) and opt.state[next(iter(D.parameters()))]["step"] == 2  # k = 2 critic steps
    assert any(not torch.equal(a, b) for a, b in zip(before, D.parameters()))
    g = gan.generator_loss(fake)
    g.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None or not p.requires_grad for p in D.parameters())  # critic frozen for G


# ----------------------------------------------------------------------------- training runs


def test_train_every_loss_checkpoint_and_export(tmp_path):
    data = make_folder(tmp_path / "data", n=2)
    tifffile.imwrite(tmp_path / "data" / "stack.tif",
                     (np.stack([texture(36, 36, seed=7 + z, channels=1)[..., 0] for z in range(2)]) * 60000).astype(np.uint16),
                     photometric="minisblack")
    val = make_folder(tmp_path / "val", n=1, size=(32, 64))
    out = tmp_path / "run"
    # the tests train from random VGG19 on purpose (pyproject filters the warning); here it must be said
    with pytest.warns(UserWarning, match="LTE starts from random VGG19 weights"):
        rc = train.main(["--data", str(data), "--val", str(val), "--out", str(out), "--steps", "2", *TINY,
                         "train.init_epochs=0", "run.ckpt_every=1", "run.val_every=2", "run.log_every=1"])
    assert rc == 0
    rows = two_logged_steps(out, ("loss", "rec", "per", "tpl", "adv", "d", "samples_per_s"))
    for r in rows:
        assert float(r["rec"]) > 0 and float(r["tpl"]) > 0 and r["phase"] == "main"
    vals = read_csv(out / "val.csv")
    assert [int(r["step"]) for r in vals] == [0, 2]  # before training and at step 2
    assert all(math.isfinite(float(r["psnr"])) and float(r["psnr_bicubic"]) > 20 for r in vals)
    assert [s for s, _ in CheckpointManager(out / "checkpoints").step_files()][-2:] == [1, 2]
    c1, c2 = (load_training_checkpoint(out / "checkpoints" / f"step_{s:08d}.pt") for s in (1, 2))
    assert c2["step"] == 2 and c2["discriminator"] is not None and c2["optimizer_d"]["state"]
    changed = [k for k in c1["model"] if not torch.equal(c1["model"][k], c2["model"][k])]
    assert any(k.startswith("MainNet.") for k in changed) and any(k.startswith("LTE.slice") for k in changed)
    assert (out / "checkpoints" / "best.pt").is_file()
    with Image.open(out / "curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    # the exported model: read by the core, same weights as the last checkpoint, and it upscales
    ck = read_checkpoint(out / "model.pt")
    assert ck.source_format == "refsr" and ck.config["arch"] == "ttsr" and ck.config["n_feats"] == 8
    assert all(torch.equal(ck.state_dict[k], c2["model"][k]) for k in ck.state_dict)
    assert ck.meta["step"] == 2 and "psnr" in ck.meta["val"]
    model = rs.load_model(out / "model.pt", device="cpu", cache=False)
    lr = (texture(12, 16, seed=3) * 255).astype(np.uint8)
    ref = (texture(48, 64, seed=4) * 255).astype(np.uint8)
    sr = rs.upscale(model, lr, ref, device="cpu")
    assert sr.shape == (48, 64, 3) and sr.dtype == np.uint8
    # evaluate.py on the validation folder reproduces the PSNR logged for the final model
    means = evaluate_reproduces_last_validation(out, val, vals[-1], tmp_path / "eval.csv")
    assert any(m.startswith("best.pt (step ") for m in means)
    # --export-from turns a training checkpoint into the same inference file
    assert train.main(["--export-from", str(out / "checkpoints" / "step_00000001.pt"),
                       "--export", str(tmp_path / "m1.pt")]) == 0
    m1 = read_checkpoint(tmp_path / "m1.pt")
    assert all(torch.equal(m1.state_dict[k], c1["model"][k]) for k in m1.state_dict)
    # a second fresh run into the same folder is refused (no silent overwrite)
    assert train.main(["--data", str(data), "--out", str(out), "--steps", "1", *TINY]) == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mixed_precision_every_loss_and_resume(tmp_path, capsys, dtype):
    """The GPU's mixed-precision path (autocast; for fp16 also GradScaler's scale/unscale/step/
    update) run on the CPU by naming the dtype: every loss finite, the scaler's state saved in
    the checkpoint and restored on resume."""
    data = make_folder(tmp_path / "data", n=2)
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), *TINY, "train.init_epochs=0", f"train.amp_dtype={dtype}",
            "run.ckpt_every=1", "run.log_every=1"]
    assert train.main([*args, "--steps", "1"]) == 0
    assert f"mixed precision {dtype}" in capsys.readouterr().err
    assert train.main([*args, "--steps", "2", "--resume"]) == 0
    two_logged_steps(out, ("loss", "rec", "per", "tpl", "adv", "d"))
    c1, c2 = (load_training_checkpoint(out / "checkpoints" / f"step_{s:08d}.pt") for s in (1, 2))
    if dtype == "float16":
        assert c1["scaler"]["scale"] > 0 and c2["scaler"]["_growth_tracker"] == c1["scaler"]["_growth_tracker"] + 1
    else:
        assert not c2["scaler"]  # bf16 needs no loss scaling
    assert all(v.dtype == torch.float32 for v in c2["model"].values() if v.is_floating_point())
    assert any(not torch.equal(c1["model"][k], c2["model"][k]) for k in c1["model"])


def test_fine_tune_from_checkpoint_rec_only(tmp_path):
    data = make_folder(tmp_path / "data", n=2)
    torch.manual_seed(1)
    net = TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1)))
    init = export_model(net, tmp_path / "init.pt")
    out = tmp_path / "ft"
    assert train.main(["--data", str(data), "--out", str(out), "--init", str(init), "--rec-only", "--steps", "1",
                       *TINY]) == 0
    state = load_training_checkpoint(CheckpointManager(out / "checkpoints").latest())
    assert state["discriminator"] is None and state["config"]["loss"]["adv"] == 0.0
    # started from the given weights: one Adam step moves each weight by at most ~lr
    delta = max(float((state["model"][k] - v).abs().max()) for k, v in net.state_dict().items())
    assert 0 < delta < 5e-4


def test_fine_tune_the_shipped_default_by_name_with_mse(tmp_path):
    """The user's path on a fresh offline install: fine-tune the packaged default model by its
    registry name (its own architecture comes with it), here with loss.rec_type=l2."""
    data = make_folder(tmp_path / "data", n=2)
    out = tmp_path / "ft"
    assert train.main(["--data", str(data), "--out", str(out), "--init", rs.DEFAULT_MODEL, "--rec-only",
                       "--steps", "1", "loss.rec_type=l2", *TINY]) == 0
    state = load_training_checkpoint(CheckpointManager(out / "checkpoints").latest())
    assert state["model_config"]["n_feats"] == 32 and state["model_config"]["global_skip"] is True
    shipped = weights.read_checkpoint(weights.fetch(rs.DEFAULT_MODEL)).state_dict
    delta = max(float((state["model"][k] - v).abs().max()) for k, v in shipped.items())
    assert 0 < delta < 5e-4  # one Adam step from the shipped weights
    assert rs.load_model(out / "model.pt", device="cpu").config["n_feats"] == 32
    with pytest.raises(RefSRError, match="rec_type"):
        check_config(load_config(None, ["loss.rec_type=huber"]))


def test_reconstruction_loss_kinds():
    sr, hr = torch.tensor([0.0, 0.5, -1.0]), torch.tensor([0.5, 0.5, 1.0])
    assert float(reconstruction_loss(sr, hr)) == pytest.approx((0.5 + 0 + 2) / 3)
    assert float(reconstruction_loss(sr, hr, "l2")) == pytest.approx((0.25 + 0 + 4) / 3)


def test_resume_after_kill_continues_identically(tmp_path):
    data = make_folder(tmp_path / "data", n=1)  # 2 samples → 1 step per epoch at batch 2
    common = ["--data", str(data), *TINY, "train.init_epochs=1", "loss.per=0", "loss.tpl=0", "optim.decay=1",
              "run.ckpt_every=1", "run.keep_last=100", "run.log_every=1"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(TRAIN_PY), "--out", str(killed), "train.max_steps=60", *common],
                            env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckdir = killed / "checkpoints"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckdir.is_dir() and any(p.name.startswith("step_") for p in ckdir.iterdir()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stderr.close()
    saved = CheckpointManager(ckdir).step_files()
    s = saved[-1][0]
    assert 1 <= s < 10 and not (killed / "model.pt").exists()
    target = s + 2  # crosses the end of a full epoch (scheduler step); for s = 1 also warm-up → full

    resumed = subprocess.run([sys.executable, str(TRAIN_PY), "--out", str(killed), "--resume",
                              f"train.max_steps={target}", *common],
                             env=run_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {s} " in resumed.stderr and "fresh start" not in resumed.stderr
    assert not list(ckdir.glob(".*.tmp"))
    rows = read_csv(killed / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, target + 1))  # rows after the checkpoint dropped
    assert rows[0]["phase"] == "rec-warmup" and rows[0]["adv"] == "" and rows[0]["d"] == ""  # epoch 0: L1 only
    assert rows[-1]["phase"] == "main" and math.isfinite(float(rows[-1]["adv"])) and math.isfinite(float(rows[-1]["d"]))

    # the same run without interruption, in this process
    ref = tmp_path / "reference"
    assert train.main(["--out", str(ref), f"train.max_steps={target}", *common]) == 0
    for step in (s, target):
        a = load_training_checkpoint(ref / "checkpoints" / f"step_{step:08d}.pt")
        b = load_training_checkpoint(ckdir / f"step_{step:08d}.pt")
        for key in RUN_STATE_KEYS:
            assert_same_state(a[key], b[key], f"step {step} {key}")
    final = load_training_checkpoint(ckdir / f"step_{target:08d}.pt")
    assert final["discriminator"] is not None and final["scheduler"]["last_epoch"] >= 1
    assert final["optimizer"]["param_groups"][0]["lr"] < 1e-4  # decayed once per full epoch


def test_ddp_two_processes_gloo(tmp_path):
    data = make_folder(tmp_path / "data", n=2, size=(40, 104))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TRAIN_PY),
           "--data", str(data), "--out", str(out), "--steps", "1", *TINY, "train.init_epochs=0", "run.log_every=1"]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "× 2 processes" in proc.stderr and "parameters identical across processes" in proc.stderr
    state = load_training_checkpoint(CheckpointManager(out / "checkpoints").latest())
    assert state["world"] == 2 and state["step"] == 1 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-process random draws
    rows = read_csv(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1] and float(rows[0]["samples_per_s"]) > 0
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("loss", "rec", "per", "tpl", "adv", "d"))
    assert read_checkpoint(out / "model.pt").config["n_feats"] == 8


# ----------------------------------------------------------------------------- evaluation


def _y(rgb: np.ndarray) -> np.ndarray:
    return np.dot(rgb.astype(np.float64), [65.738, 129.057, 25.064]) / 256.0 + 16.0


def test_evaluate_cufed5_folder_against_bicubic(tmp_path, capsys):
    cufed5 = tmp_path / "CUFED" / "test" / "CUFED5"
    for i in range(2):
        for k in range(6):
            write_png(cufed5 / f"{i:03d}_{k}.png", texture(42 + k, 50, seed=10 * i + (k > 0)))
    torch.manual_seed(0)
    model_path = export_model(TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1))), tmp_path / "m.pt")
    items = eval_items(tmp_path / "CUFED", level="all")
    assert len(items) == 2 and len(items[0].refs) == 5 and items[0].hr.shape == (3, 40, 48)  # cropped to ×4
    csv_path = tmp_path / "res.csv"
    assert evaluate.main(["--model", str(model_path), "--data", str(tmp_path / "CUFED"), "--level", "1", "all",
                          "--csv", str(csv_path)]) == 0
    table = capsys.readouterr().out
    assert "bicubic" in table and "m.pt" in table and "all" in table
    rows = read_csv(csv_path)
    means = {(r["method"], r["level"]): r for r in rows if r["image"] == "mean"}
    assert set(means) == {("bicubic", "1"), ("m.pt", "1"), ("bicubic", "all"), ("m.pt", "all")}
    # bicubic per image = PIL bicubic ×1/4 then ×4, PSNR on Y (BT.601) as the reference code
    for i in range(2):
        hr = np.asarray(Image.open(cufed5 / f"{i:03d}_0.png"))[:40, :48]
        lr = Image.fromarray(hr).resize((12, 10), Image.BICUBIC)
        up = np.asarray(lr.resize((48, 40), Image.BICUBIC))
        mse = np.mean((_y(up) - _y(hr)) ** 2)
        expected = 10 * np.log10(255.0 ** 2 / mse)
        got = [float(r["psnr"]) for r in rows if r["method"] == "bicubic" and r["image"] == f"{i:03d}_0" and r["level"] == "1"]
        assert got and abs(got[0] - expected) < 1e-3
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1


def test_evaluate_with_an_uninformative_reference(tmp_path, capsys):
    """--uninformative-ref adds a row per model run with its own LR↑ as the only reference."""
    folder = tmp_path / "plain"
    write_png(folder / "a.png", texture(48, 96, seed=3))
    torch.manual_seed(0)
    model_path = export_model(TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1))), tmp_path / "m.pt")
    items = eval_items(folder)
    real = evaluate.evaluate_network(rs.load_model(model_path, device="cpu", cache=False).network, items)
    csv_path = tmp_path / "res.csv"
    assert evaluate.main(["--model", str(model_path), "--data", str(folder), "--uninformative-ref",
                          "--csv", str(csv_path)]) == 0
    means = {r["method"]: float(r["psnr"]) for r in read_csv(csv_path) if r["image"] == "mean"}
    assert set(means) == {"bicubic", "m.pt", "m.pt (ref = LR↑)"}
    assert abs(means["m.pt"] - real["psnr"]) < 1e-3
    assert math.isfinite(means["m.pt (ref = LR↑)"]) and means["m.pt (ref = LR↑)"] != means["m.pt"]


def test_evaluate_plain_folder_grayscale(tmp_path):
    gray = (texture(40, 80, seed=2, channels=1)[..., 0] * 255).round().astype(np.uint8)
    (tmp_path / "plain").mkdir()
    Image.fromarray(gray).save(tmp_path / "plain" / "g.png")
    stack = (np.stack([texture(36, 36, seed=z, channels=1)[..., 0] for z in range(3)]) * 50000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain" / "s.tif", stack, photometric="minisblack")
    items = {it.name: it for it in eval_items(tmp_path / "plain")}
    assert set(items) == {"g", "s"} and all(it.gray for it in items.values())
    assert items["g"].hr.shape == (3, 40, 40) and items["g"].refs[0].shape == (3, 40, 40)  # halves
    assert items["s"].hr.shape == (3, 36, 36) and not items["s"].quantize
    res = evaluate.evaluate_network(None, [items["g"]])
    hr = gray[:, :40].astype(np.float64)
    up = np.asarray(Image.fromarray(gray[:, :40]).resize((10, 10), Image.BICUBIC).resize((40, 40), Image.BICUBIC))
    expected = 10 * np.log10(255.0 ** 2 / np.mean((up - hr) ** 2))  # plain PSNR on the one channel
    assert abs(res["psnr_bicubic"] - expected) < 1e-6


def test_atomic_save_never_leaves_a_half_file(tmp_path):
    target = tmp_path / "ck.pt"
    atomic_torch_save({"a": torch.ones(2)}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": torch.zeros(2), "b": Boom()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    with pytest.raises(RefSRError, match="not a napari-refsr training checkpoint"):
        load_training_checkpoint(target)


# ----------------------------------------------------------------------------- SRNTT


def test_srntt_config_paper_defaults_and_arch_errors(tmp_path, capsys):
    srntt = load_config(REPO / "training" / "configs" / "srntt.yaml")
    flag = train.build_config(train.parse_args(["--model", "srntt"]))
    for section in ("model", "loss", "optim", "train"):  # the file writes out what the flag starts from
        assert srntt[section] == flag[section], section
    loss, opt, tr = flag["loss"], flag["optim"], flag["train"]
    assert (loss["rec"], loss["per"], loss["tpl"], loss["tex"], loss["adv"]) == (1.0, 1e-4, 0.0, 1e-4, 1e-6)
    assert (loss["gan_k"], loss["gp"], loss["tex_use_S"], loss["tex_S_scale"], loss["tex_S_bias"]) == (1, 10.0, True, -20.0, 0.65)
    assert (opt["lr"], opt["lr_dis"], opt["betas_dis"], opt["decay"], opt["gamma"]) == (1e-4, 1e-4, [0.9, 0.999], 50, 0.1)
    assert (tr["batch"], tr["init_epochs"], tr["epochs"], flag["data"]["crop"]) == (9, 5, 100, 160)
    assert flag["run"]["out"] == "runs/srntt"
    # TTSR stays the default and keeps its paper values; the architecture can come from a YAML file too
    default = load_config(None)
    assert default["model"]["arch"] == "ttsr" and default["loss"]["tex"] == 0.0 and default["loss"]["tpl"] == 1e-2
    (tmp_path / "mine.yaml").write_text("model:\n  arch: srntt\nloss:\n  adv: 0.0\n")
    mine = load_config(tmp_path / "mine.yaml", ["loss.tex=0.5"])
    assert (mine["loss"]["per"], mine["loss"]["tex"], mine["loss"]["adv"], mine["train"]["epochs"]) == (1e-4, 0.5, 0.0, 100)
    assert ARCH_DEFAULTS["ttsr"] == {}
    net = rs.build_network(network_config(load_config(None, ["arch=srntt", "model.n_feats=8",
                                                                    "model.content_blocks=2", "model.use_weights=false"])["model"]))
    assert isinstance(net, SRNTT) and net.config.content_blocks == 2 and not net.config.use_weights
    # settings of the other architecture, or a loss that does not fit it, are refused by name
    for overrides, match in [
        (["arch=srntt", "loss.tpl=0.01"], "loss.tpl .*model.arch is srntt"),
        (["loss.tex=1e-4"], "loss.tex .*model.arch is ttsr"),
        (["arch=srntt", "model.num_res_blocks=[1,1,1,1]"], "model.num_res_blocks is a ttsr setting"),
        (["model.transfer_blocks=[1,1,1]"], "model.transfer_blocks is a srntt setting"),
        (["arch=srntt", "optim.lr_lte=1.0e-3"], "optim.lr_lte"),
        (["arch=srntt", "loss.tex_use_S=maybe"], "tex_use_S"),
        (["arch=esrgan"], "model.arch must be one of ttsr, srntt"),
    ]:
        with pytest.raises(RefSRError, match=match):
            check_config(load_config(None, overrides))
    with pytest.raises(RefSRError, match="unknown config key 'model.content_block'"):
        load_config(None, ["arch=srntt", "model.content_block=2"])
    # through the command line: TTSR's file with --model srntt is a one-line error, before any work
    data = make_folder(tmp_path / "data", n=1)
    rc = train.main(["--config", str(REPO / "training" / "configs" / "ttsr.yaml"), "--model", "srntt",
                     "--data", str(data), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "loss.tpl" in err and "Traceback" not in err and not (tmp_path / "run").exists()


def _direct_texture_loss(feats, maps, s_per_sample, a=-20.0, b=0.65, use_S=True):
    """The texture loss written out: per layer and sample, Gram matrices as sums over positions of
    the (weighted) features, squared differences averaged, / (4·(C·H·W)²); mean over layers."""
    total = 0.0
    for f, m in zip(feats, maps):
        n, c, h, w = f.shape
        per_sample = []
        for i in range(n):
            wt = torch.sigmoid(torch.tensor(a * s_per_sample[i] + b, dtype=torch.float64)) if use_S else 1.0
            fi, mi = f[i].double() * wt, m[i].double() * wt
            g_f = torch.einsum("cp,dp->cd", fi.reshape(c, -1), fi.reshape(c, -1))
            g_m = torch.einsum("cp,dp->cd", mi.reshape(c, -1), mi.reshape(c, -1))
            per_sample.append(((g_f - g_m) ** 2).mean())
        total += float(torch.stack(per_sample).mean()) / (4.0 * (c * h * w) ** 2)
    return total / 3.0


def test_texture_loss_equals_its_definition(vgg_file):
    lte = LTE()
    lte.load_vgg19(torch.load(vgg_file, weights_only=True))
    lte.requires_grad_(False)
    torch.manual_seed(6)
    sr = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    other = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        m1, m2, m3 = lte(other)  # "swapped maps": textures of another image
        f1, f2, f3 = lte((sr + 1) / 2)
    s_values = [0.02, 0.05]  # S constant per sample: its upsampled maps are the same constants
    S = torch.tensor(s_values).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    loss = TextureLoss()(lte, sr, S, m3, m2, m1)
    value = float(loss.detach())
    expected = _direct_texture_loss([f3, f2, f1], [m3, m2, m1], s_values)
    assert expected > 1e-9  # far from float32 underflow (PyTorch's default init gives ~1e-40 here)
    assert abs(value - expected) <= 1e-4 * expected
    unweighted = float(TextureLoss(use_S=False)(lte, sr, S, m3, m2, m1).detach())
    assert abs(unweighted - _direct_texture_loss([f3, f2, f1], [m3, m2, m1], s_values, use_S=False)) <= 1e-4 * unweighted
    assert abs(unweighted - value) > 1e-3 * value  # the similarity weighting matters
    loss.backward()  # gradients reach the SR image, never the frozen extractor
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in lte.parameters())
    assert float(TextureLoss()(lte, sr.detach(), torch.rand(2, 1, 4, 4), f3, f2, f1)) == 0.0  # SR's own textures
    assert torch.equal(gram_matrix(f1), torch.bmm(f1.flatten(2), f1.flatten(2).transpose(1, 2)))
    with pytest.raises(RefSRError, match="texture loss"):
        TextureLoss()(lte, sr, S, m3[..., :2], m2, m1)


def test_srntt_trains_every_loss_checkpoint_export_and_evaluate(tmp_path, vgg_file, capsys):
    data = make_folder(tmp_path / "data", n=2)
    val = make_folder(tmp_path / "val", n=1, size=(32, 64))
    out = tmp_path / "run"
    rc = train.main(["--data", str(data), "--val", str(val), "--out", str(out), "--steps", "2", *TINY_SRNTT,
                     f"model.vgg_weights={vgg_file}", "train.init_epochs=0", "run.ckpt_every=1", "run.val_every=2",
                     "run.log_every=1"])
    assert rc == 0
    rows = two_logged_steps(out, ("loss", "rec", "per", "tex", "adv", "d", "samples_per_s"))
    for r in rows:
        assert float(r["rec"]) > 0 and float(r["per"]) > 0 and float(r["tex"]) > 0 and r["phase"] == "main"
        assert r["tpl"] == "" and r["lr_lte"] == ""  # no TTSR loss, no LTE learning rate
    vals = read_csv(out / "val.csv")
    assert [int(r["step"]) for r in vals] == [0, 2] and all(math.isfinite(float(r["psnr"])) for r in vals)
    c1, c2 = (load_training_checkpoint(out / "checkpoints" / f"step_{s:08d}.pt") for s in (1, 2))
    assert c2["model_config"]["arch"] == "srntt" and c2["config"]["loss"]["tex"] == 1e-4  # --model srntt's defaults
    assert c2["discriminator"] is not None and c2["optimizer_d"]["state"]
    # the VGG19 file is SRNTT's fixed extractor: loaded, and never trained
    vgg = weights.load_state_dict_file(vgg_file)
    vgg_keys = [k for k in c2["model"] if k.startswith("vgg.slice")]
    assert len(vgg_keys) == 10  # conv1_1 … conv3_1
    for k in vgg_keys:
        index, rest = k.split(".", 3)[2:]
        assert torch.equal(c1["model"][k], vgg[f"features.{index}.{rest}"]) and torch.equal(c2["model"][k], c1["model"][k])
    changed = {k.split(".")[0] for k in c1["model"] if not torch.equal(c1["model"][k], c2["model"][k])}
    assert changed == {"content", "stages", "tail1", "tail2", "weight_scale", "weight_bias"}
    config = SRNTTConfig(**{k: c2["model_config"][k] for k in ("n_feats", "content_blocks", "transfer_blocks")})
    trainable = [n for n, p in SRNTT(config).named_parameters() if p.requires_grad]
    groups = c2["optimizer"]["param_groups"]
    assert len(groups) == 1 and len(groups[0]["params"]) == len(trainable) and not any(n.startswith("vgg.") for n in trainable)
    # the export: read by the core as SRNTT, the last checkpoint's weights, and it upscales
    ck = read_checkpoint(out / "model.pt")
    assert ck.source_format == "refsr" and ck.config["arch"] == "srntt" and ck.config["transfer_blocks"] == [1, 1, 1]
    assert set(ck.state_dict) == set(c2["model"]) and all(torch.equal(ck.state_dict[k], c2["model"][k]) for k in ck.state_dict)
    assert ck.meta["arch"] == "srntt" and ck.meta["step"] == 2 and "psnr" in ck.meta["val"]
    model = rs.load_model(out / "model.pt", device="cpu", cache=False)
    assert isinstance(model.network, SRNTT) and model.arch == "srntt"
    lr = (texture(12, 16, seed=3) * 255).astype(np.uint8)
    ref = (texture(48, 64, seed=4) * 255).astype(np.uint8)
    res = rs.upscale_detailed(model, lr, ref, device="cpu")
    assert res.image.shape == (48, 64, 3) and res.image.dtype == np.uint8 and len(np.unique(res.image)) > 50
    assert 0 <= res.confidence.min() and res.confidence.max() <= 1 + 1e-4
    # evaluate.py takes the export and the training checkpoint, and reproduces the logged PSNR
    means = evaluate_reproduces_last_validation(out, val, vals[-1], tmp_path / "eval.csv")
    assert any(m.startswith("best.pt (step 2)") and abs(v - means["model.pt"]) < 1e-6 for m, v in means.items())
    # --export-from works for SRNTT training checkpoints too
    assert train.main(["--export-from", str(out / "checkpoints" / "step_00000001.pt"),
                       "--export", str(tmp_path / "m1.pt")]) == 0
    m1 = read_checkpoint(tmp_path / "m1.pt")
    assert m1.config["arch"] == "srntt" and all(torch.equal(m1.state_dict[k], c1["model"][k]) for k in m1.state_dict)
    # fine-tuning from the export: the architecture must match
    capsys.readouterr()
    assert train.main(["--data", str(data), "--out", str(tmp_path / "ft"), "--init", str(out / "model.pt"),
                       *TINY, "--steps", "1"]) == 2  # TINY = TTSR
    assert "holds a srntt network, but model.arch is ttsr" in capsys.readouterr().err


def test_srntt_resume_continues_identically(tmp_path, vgg_file, capsys):
    data = make_folder(tmp_path / "data", n=1)  # 2 samples → 1 step per epoch at batch 2
    common = ["--data", str(data), *TINY_SRNTT, f"model.vgg_weights={vgg_file}", "train.init_epochs=1",
              "optim.decay=1", "run.ckpt_every=1", "run.keep_last=100", "run.log_every=1"]
    first = tmp_path / "first"
    assert train.main(["--out", str(first), "train.max_steps=1", *common]) == 0
    assert train.main(["--out", str(first), "--resume", "train.max_steps=3", *common]) == 0
    assert "resumed from" in capsys.readouterr().err
    ref = tmp_path / "reference"
    assert train.main(["--out", str(ref), "train.max_steps=3", *common]) == 0  # without interruption
    for step in (1, 3):
        a = load_training_checkpoint(ref / "checkpoints" / f"step_{step:08d}.pt")
        b = load_training_checkpoint(first / "checkpoints" / f"step_{step:08d}.pt")
        for key in RUN_STATE_KEYS:
            assert_same_state(a[key], b[key], f"step {step} {key}")
    rows = read_csv(first / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert rows[0]["phase"] == "rec-warmup" and rows[0]["tex"] == "" and rows[0]["adv"] == ""
    assert rows[-1]["phase"] == "main" and float(rows[-1]["tex"]) > 0 and math.isfinite(float(rows[-1]["d"]))
    final = load_training_checkpoint(first / "checkpoints" / f"step_{3:08d}.pt")
    assert final["model_config"]["arch"] == "srntt" and final["optimizer"]["param_groups"][0]["lr"] < 1e-4
    assert read_checkpoint(first / "model.pt").meta["step"] == 3
    # resuming an SRNTT run as TTSR is refused with the reason
    rc = train.main(["--out", str(first), "--resume", "--model", "ttsr", "train.max_steps=4"])
    err = capsys.readouterr().err
    assert rc == 2 and "is from a srntt run" in err and "Traceback" not in err
