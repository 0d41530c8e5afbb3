"""Training checkpoints: atomic writes, RNG state capture, rotation (last N + best), resume, and
the network of a checkpoint (for export, evaluation and resuming).

A training checkpoint is one ``torch.save`` dict (``format: napari-refsr-train``) holding the
whole run state — network, optimizers, discriminator, scheduler, AMP scaler, step/epoch and the
python/numpy/torch RNG states of every process — stored with plain types only, so it loads with
``weights_only=True``. Inference exports use :func:`napari_refsr.weights.save_checkpoint`.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_refsr import weights
from napari_refsr.archs.registry import build_network
from napari_refsr.errors import RefSRError
from napari_refsr.files import atomic_write, fsync_dir
from napari_refsr.phases import check_phases
from napari_refsr.weights import load_state_dict_file

__all__ = ["TRAIN_FORMAT", "atomic_torch_save", "load_training_checkpoint", "rng_state", "set_rng_state",
           "CheckpointManager", "model_config", "network_from_checkpoint", "export_model",
           "export_training_checkpoint"]

TRAIN_FORMAT = "napari-refsr-train"
TRAIN_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the target folder, fsync, then rename: never a half file."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_training_checkpoint(path: str | Path) -> dict:
    """A training checkpoint written by :class:`CheckpointManager` (safe ``weights_only`` load, on the CPU)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RefSRError(f"training checkpoint not found: {path}")
    try:  # the core's safe reader: one line for an empty, truncated or foreign file
        obj = load_state_dict_file(path)
    except RefSRError as err:
        raise RefSRError(f"cannot read training checkpoint {err}") from None
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_FORMAT:
        raise RefSRError(f"{path} is not a napari-refsr training checkpoint (to fine-tune from model "
                         f"weights use model.init=PATH instead of --resume)")
    return obj


def rng_state() -> dict:
    """This process's python, numpy and torch (CPU + CUDA) RNG states, as plain data/tensors."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_from_plain(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_plain(obj):
    if isinstance(obj, tuple):
        return {"tuple": [_to_plain(x) for x in obj]}
    return obj


def _from_plain(obj):
    if isinstance(obj, dict) and set(obj) == {"tuple"}:
        return tuple(_from_plain(x) for x in obj["tuple"])
    return obj


class CheckpointManager:
    """``<folder>/step_XXXXXXXX.pt`` files (the last ``keep_last`` kept) and ``best.pt``."""

    def __init__(self, folder: str | Path, keep_last: int = 3):
        self.folder = Path(folder)
        self.keep_last = max(1, int(keep_last))

    def step_files(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _STEP_FILE.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        files = self.step_files()
        return files[-1][1] if files else None

    def remove_partial(self) -> None:
        """Temp files left by a process killed while writing (the real files are intact)."""
        if self.folder.is_dir():
            for p in self.folder.glob(".*.tmp"):
                try:
                    p.unlink()
                except OSError:
                    pass

    def save(self, state: dict, step: int, *, best: bool = False) -> Path:
        state = dict(state, format=TRAIN_FORMAT, version=TRAIN_VERSION)
        path = atomic_torch_save(state, self.folder / f"step_{step:08d}.pt")
        if best:
            self._link(path, self.folder / "best.pt")
        for _, old in self.step_files()[: -self.keep_last]:
            try:
                old.unlink()
            except OSError:
                pass
        return path

    @staticmethod
    def _link(src: Path, dst: Path) -> None:
        """Atomically make ``dst`` the same file as ``src`` (hard link, or a copy where links fail)."""
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)


# ----------------------------------------------------------------------------- networks and exports


def model_config(net: torch.nn.Module) -> dict:
    """The architecture config of a network (what :func:`build_network` takes back)."""
    cfg = net.config
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def network_from_checkpoint(state: dict) -> torch.nn.Module:
    """The network of a training checkpoint (as :func:`load_training_checkpoint` returns it)."""
    net = build_network(state["model_config"])
    net.load_state_dict(state["model"])
    return net


def export_model(net: torch.nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write the inference checkpoint (weights + architecture) that ``load_model`` reads."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return weights.save_checkpoint(path, state, model_config(net), dict(meta or {}))


def export_training_checkpoint(ckpt_path: str | Path, out: str | Path, search_phases: int | None = None) -> Path:
    """Export the network of a training checkpoint (e.g. ``best.pt``) for inference;
    ``search_phases`` sets the exported network's default reference phases
    (:mod:`napari_refsr.phases`; they change no weight, so a run trained without them can ship them)."""
    state = load_training_checkpoint(ckpt_path)
    meta = dict(state.get("meta", {}), step=state["step"], epoch=state["epoch"], source=str(ckpt_path))
    if search_phases is not None:
        state["model_config"] = dict(state["model_config"], search_phases=check_phases(search_phases))
    return export_model(network_from_checkpoint(state), out, meta)
