"""What a resumed run does with settings that differ from the checkpoint's, decided per setting.

* Refused (one error naming them): the network (``model.*`` but ``vgg_weights``; the weights come
  from the checkpoint), ``model.init`` (nothing to initialise), ``train.seed`` (the random streams
  are restored), and ``data.crop`` while a discriminator — sized for the old crop — is restored.
* Applied, and listed in the log: the optimisers' settings (``optim.*``: learning rates through
  the schedule, betas, eps, decay, gamma), ``train.batch`` (the epoch continues at the same sample;
  see :func:`epoch_position`), and everything read afresh anyway (losses, data, epochs, run).

So the config written with the run (``config.yaml``, every checkpoint) is what is applied.
Also: :func:`latest_intact`, the newest training checkpoint that can be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from napari_refsr.errors import RefSRError

__all__ = ["changed_settings", "check_changes", "fresh_settings", "apply_optimizer_settings", "epoch_position", "latest_intact",
           "describe"]

_KEEP_MODEL = {"model.vgg_weights"}  # the perceptual loss's VGG: not part of the resumed network
_REFUSED = {"train.seed": "the run's random streams are restored from the checkpoint"}


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(stored: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (checkpoint's value, new value) for every setting that differs (settings the
    checkpoint predates are left out: the run used their defaults)."""
    a, b = _flat(stored), _flat(new)
    return {k: (a[k], b.get(k)) for k in sorted(a) if a[k] != b.get(k)}


def check_changes(changes: dict[str, tuple[Any, Any]], *, discriminator_restored: bool) -> None:
    """Raise one RefSRError listing every change a resumed run cannot apply."""
    refused = []
    for key, (old, new) in changes.items():
        if key.startswith("model.") and key not in _KEEP_MODEL:
            why = ("nothing is initialised on resume" if key == "model.init"
                   else "the network and its weights come from the checkpoint")
        elif key in _REFUSED:
            why = _REFUSED[key]
        elif key == "data.crop" and discriminator_restored:
            why = f"the discriminator in the checkpoint is built for {old}-pixel crops (or set loss.adv=0)"
        else:
            continue
        refused.append(f"{key} {old!r} → {new!r} ({why})")
    if refused:
        raise RefSRError("cannot apply on resume: " + "; ".join(refused) + ". Start a new run (another --out, "
                         "model.init=<checkpoint> to start from its weights) or resume without these changes")


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in changes.items())


def fresh_settings(optimizer) -> list[dict]:
    """Each param group's hyperparameters as built from the config (call before ``load_state_dict``)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def apply_optimizer_settings(optimizer, fresh: list[dict], *, scheduler=None, step_size: int | None = None,
                             gamma: float | None = None) -> None:
    """After ``load_state_dict``: put back the config's hyperparameters (``fresh``, from
    :func:`fresh_settings`). A learning rate applies through the schedule, lr = new base ×
    gamma^(epochs // step size), as if the run had used it from the start. Call it only when a
    setting changed: the stored values are then kept bit for bit."""
    for group, new in zip(optimizer.param_groups, fresh):
        for key in ("betas", "eps", "weight_decay"):
            if key in new:
                group[key] = new[key]
        group["initial_lr"] = group["lr"] = new["lr"]
    if scheduler is None:
        return
    scheduler.step_size = int(step_size if step_size is not None else scheduler.step_size)
    scheduler.gamma = float(gamma if gamma is not None else scheduler.gamma)
    factor = scheduler.gamma ** (scheduler.last_epoch // scheduler.step_size)
    scheduler.base_lrs = [new["lr"] for new in fresh]
    for group, new in zip(optimizer.param_groups, fresh):
        group["lr"] = new["lr"] * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def epoch_position(epoch_step: int, *, old_batch: int, old_world: int, batch: int, world: int,
                   steps_per_epoch: int) -> tuple[int, str | None]:
    """The step within the epoch at which a run continues when the batch or the number of
    processes changed: at the same sample (rounded down: up to one batch is seen again), so the
    epoch is not cut short. Returns (epoch_step, a note for the log or None)."""
    if (old_batch, old_world) == (batch, world):
        return epoch_step, None
    seen = epoch_step * old_batch * old_world
    new_step = min(seen // (batch * world), steps_per_epoch)
    again = seen - new_step * batch * world
    note = (f"batch {old_batch} × {old_world} process(es) → {batch} × {world}: the current epoch continues "
            f"after sample {new_step * batch * world} of it (step {new_step} of {steps_per_epoch})"
            + (f"; {again} samples are seen again" if again else ""))
    return new_step, note


def latest_intact(step_files: list[tuple[int, Path]], load: Callable[[Path], dict],
                  log: Callable[[str], None]) -> tuple[Path | None, dict | None]:
    """The newest checkpoint of ``step_files`` that ``load`` reads; damaged newer ones (a 0-byte or
    truncated file after a crash or a full disk) are skipped with a message. None when none exist;
    RefSRError when every one is damaged."""
    problems = []
    for _, path in reversed(step_files):
        try:
            state = load(path)
        except RefSRError as err:
            problems.append(str(err))
            continue
        if problems:
            log(f"warning: skipped {len(problems)} damaged checkpoint(s), resuming from the newest intact one, "
                f"{path.name}: " + "; ".join(problems))
        return path, state
    if problems:
        raise RefSRError("no intact checkpoint to resume: " + "; ".join(problems))
    return None, None
