"""Training logs: append-only CSV files (losses, validation) and optional TensorBoard events."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from napari_refsr.files import atomic_write

__all__ = ["LOSS_KEYS", "LOG_FIELDS", "VAL_FIELDS", "CsvLog", "open_tensorboard"]

LOSS_KEYS = ("loss", "rec", "per", "tpl", "tex", "adv", "d")
LOG_FIELDS = ["step", "epoch", "phase", *LOSS_KEYS, "lr", "lr_lte", "samples_per_s", "elapsed_s"]
VAL_FIELDS = ["step", "epoch", "psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "n"]


class CsvLog:
    """Append-only CSV with a header; on resume, rows after the resumed step are dropped.

    That rewrite is atomic: a kill during it leaves the old log, never an empty one."""

    def __init__(self, path: Path, fields: Sequence[str], resume_step: int | None):
        self.path, self.fields = path, list(fields)
        rows = self.read() if path.exists() and resume_step is not None else []
        rows = [r for r in rows if _num(r.get("step")) <= resume_step] if resume_step is not None else []
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=self.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))

    def read(self) -> list[dict]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in self.fields})


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf


def open_tensorboard(folder: Path):
    """A TensorBoard writer for ``folder``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV and PNG only
        return None
    return SummaryWriter(str(folder))
