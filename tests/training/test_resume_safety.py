"""Resuming a run: the logs survive a kill, changed settings are applied or refused (never
silently dropped), and a damaged latest checkpoint falls back to the newest intact one.

(issue 14, items 3, 6, 7 and 10) Tiny TTSR, 32-pixel crops, real PNG files, real kill -9.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import napari_refsr

REPO = Path(napari_refsr.__file__).resolve().parent.parent
TINY = ["model.n_feats=8", "model.num_res_blocks=[1,1,1,1]", "model.vgg_weights=null", "data.crop=32",
        "data.min_ref=16", "data.workers=0", "train.batch=2", "train.threads=1", "run.progress=false",
        "loss.per=0", "loss.tpl=0", "train.init_epochs=0", "run.log_every=1", "run.keep_last=10"]


def _train():
    from training import train

    return train


def _data(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = np.mgrid[0:40, 0:72]
        img = np.stack([np.sin(y / (2 + c + i)) * np.cos(x / (3 + c)) for c in range(3)], -1)
        img = img + 0.2 * rng.standard_normal(img.shape)
        Image.fromarray(np.uint8((img - img.min()) / np.ptp(img) * 255)).save(root / f"img{i}.png")
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ 6: logs and kill -9

_REWRITER = textwrap.dedent("""
    import sys
    from training.logs import CsvLog, LOG_FIELDS

    print("ready", flush=True)
    while True:  # what every resume does to log.csv: read it, keep the rows up to the step, rewrite
        CsvLog(__import__("pathlib").Path(sys.argv[1]), LOG_FIELDS, 10**9)
""")


def test_a_kill_while_the_log_is_rewritten_at_resume_never_loses_it(tmp_path):
    """kill -9 exactly while the log is being rewritten (seen from outside: the log shrank, or a
    temp file for it exists): the log must still hold every row, and the next resume cleans up."""
    from training.logs import LOG_FIELDS, CsvLog

    log = tmp_path / "log.csv"
    n = 20000
    with open(log, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows({"step": i, "epoch": 0, "loss": 0.5, "rec": 0.5, "phase": "main"} for i in range(1, n + 1))
    full = log.stat().st_size
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _REWRITER, str(log)], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            deadline = time.time() + 30
            while time.time() < deadline:
                if log.stat().st_size < full or list(tmp_path.glob(".log.csv.*.tmp")):
                    break
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
            proc.stdout.close()
        rows = _rows(log)
        assert len(rows) == n and rows[-1]["step"] == str(n), f"log.csv has {len(rows)} of {n} rows after kill -9"
    CsvLog(log, LOG_FIELDS, n)  # the next resume
    assert len(_rows(log)) == n and not list(tmp_path.glob(".log.csv.*"))


# ------------------------------------------------------------------------------ 3: changed settings


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 2-step run (checkpoints at steps 1 and 2, discriminator on): 4 images = 8 samples per epoch."""
    root = tmp_path_factory.mktemp("base")
    data = _data(root / "data", n=4)
    out = root / "run"
    assert _train().main(["--data", str(data), "--out", str(out), "--steps", "2", "run.ckpt_every=1", *TINY]) == 0
    return data, out


def _copy(base_run, tmp_path) -> tuple[Path, Path]:
    import shutil

    data, out = base_run
    shutil.copytree(out, tmp_path / "run")
    return data, tmp_path / "run"


def _ckpt(out: Path, step: int) -> dict:
    from training.checkpoints import load_training_checkpoint

    return load_training_checkpoint(out / "checkpoints" / f"step_{step:08d}.pt")


def test_a_new_learning_rate_on_resume_is_applied_and_recorded(base_run, tmp_path, capsys):
    data, out = _copy(base_run, tmp_path)
    capsys.readouterr()
    assert _train().main(["--data", str(data), "--out", str(out), "--resume", "--steps", "3", "optim.lr=1e-2",
                          "optim.lr_dis=3e-3", *TINY]) == 0
    err = capsys.readouterr().err
    assert "resume: applied" in err and "optim.lr 0.0001 → 0.01" in err, err
    state = _ckpt(out, 3)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2)  # the run used what it records
    assert state["optimizer"]["param_groups"][1]["lr"] == pytest.approx(1e-5)  # lr_lte unchanged
    assert state["optimizer_d"]["param_groups"][0]["lr"] == pytest.approx(3e-3)
    assert state["config"]["optim"]["lr"] == pytest.approx(1e-2)
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(1e-2)


def test_an_unchanged_resume_keeps_the_stored_learning_rates_bit_for_bit(base_run, tmp_path):
    data, out = _copy(base_run, tmp_path)
    before = _ckpt(out, 2)["optimizer"]["param_groups"]
    assert _train().main(["--data", str(data), "--out", str(out), "--resume", "--steps", "3", *TINY]) == 0
    assert [g["lr"] for g in _ckpt(out, 3)["optimizer"]["param_groups"]] == [g["lr"] for g in before]


@pytest.mark.parametrize("override, named", [
    ("model.n_feats=16", "model.n_feats 8 → 16"),
    ("model.num_res_blocks=[2,1,1,1]", "model.num_res_blocks"),
    ("train.seed=5", "train.seed 0 → 5"),
    ("data.crop=64", "data.crop 32 → 64"),
])
def test_a_setting_that_cannot_change_on_resume_is_refused_and_nothing_is_recorded(base_run, tmp_path, capsys,
                                                                                   override, named):
    data, out = _copy(base_run, tmp_path)
    config_before = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert _train().main(["--data", str(data), "--out", str(out), "--resume", "--steps", "3", *TINY, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot apply on resume: ") and named in err and err.count("\n") == 1, err
    assert (out / "config.yaml").read_text() == config_before
    assert not (out / "checkpoints" / "step_00000003.pt").exists()


def test_a_new_batch_size_continues_the_epoch_at_the_same_sample_and_says_so(base_run, tmp_path, capsys):
    """Batch 2 → 4 after one step (2 of 8 samples seen): the epoch goes on from sample 0 with the
    new batch (2 samples again) instead of skipping to sample 4 and ending the epoch early."""
    data, _ = base_run
    out = tmp_path / "run4"
    capsys.readouterr()
    assert _train().main(["--data", str(data), "--out", str(out), "--resume-from",
                          str(base_run[1] / "checkpoints" / "step_00000001.pt"), "--steps", "2",
                          *TINY, "train.batch=4"]) == 0
    err = capsys.readouterr().err
    assert "train.batch 2 → 4" in err and "the current epoch continues" in err and "2 samples are seen again" in err
    state = _ckpt(out, 2)
    assert (state["epoch"], state["epoch_step"]) == (0, 1)  # epoch 0 not cut short


# ------------------------------------------------------------------------------ 7: damaged checkpoints


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(base_run, tmp_path, capsys, damage):
    data, out = _copy(base_run, tmp_path)
    latest = out / "checkpoints" / "step_00000002.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2] if damage == "truncated" else b"")
    capsys.readouterr()
    assert _train().main(["--data", str(data), "--out", str(out), "--resume", "--steps", "3", *TINY]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 damaged checkpoint(s), resuming from the newest intact one, step_00000001.pt" in err, err
    assert "at step 1 " in err and "weights_only" not in err
    assert _ckpt(out, 3)["step"] == 3


def test_a_training_checkpoint_with_pickled_code_is_refused_without_suggesting_weights_only_false(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-refsr-train", "x": Path("/")}, path)  # a pickled class instance
    assert _train().main(["--data", str(tmp_path), "--out", str(tmp_path / "r"), "--resume-from", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not loaded because unpickling them could run code" in err, err
    assert "weights_only" not in err
