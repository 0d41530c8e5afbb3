"""Train or fine-tune TTSR or SRNTT on your own images, as their papers did.

    python training/train.py --config training/configs/ttsr.yaml --data MY_IMAGES --init ttsr-gan \\
        --out runs/mine train.epochs=10
    python training/train.py --model srntt --data MY_IMAGES --out runs/srntt   # SRNTT, its paper's losses
    torchrun --nproc_per_node=4 training/train.py ...      # the same script, DistributedDataParallel
    python training/train.py --out runs/mine --resume      # continue a killed run where it was
    python training/train.py --resume-from runs/mine/checkpoints/best.pt --out runs/mine-2 train.epochs=60

The run folder gets ``config.yaml`` (the resolved config), ``log.csv`` (losses, learning rate,
samples/s), ``val.csv`` (PSNR/SSIM next to bicubic), ``curves.png``, TensorBoard events under
``tb/`` when tensorboard is installed, ``checkpoints/step_*.pt`` (last N) and ``best.pt``, and the
exported inference model ``model.pt`` that ``napari_refsr.load_model``, the napari widget and
the ComfyUI loader read.

Schedule (the reference code's): ``train.init_epochs`` reconstruction-only epochs, then
``train.epochs`` with every loss whose weight is > 0; Adam with the LTE at its own learning rate;
StepLR every ``optim.decay`` epochs of the second phase; WGAN-GP critic trained ``loss.gan_k``
times per generator step. ``--rec-only`` gives the -rec variant.

``--model srntt`` (``model.arch: srntt``) trains SRNTT instead: its frozen VGG19 is never
optimised, TTSR's transferal perceptual loss gives way to SRNTT's texture loss (``loss.tex``),
and the defaults are SRNTT's paper weights and schedule (``config.ARCH_DEFAULTS``).

This file is the command line only: the run is :class:`training.trainer.Trainer`, processes
:mod:`training.distributed`, checkpoints and exports :mod:`training.checkpoints`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script from a source checkout: be training.<module> (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import training  # noqa: E402, F401

    __package__ = "training"

import torch.distributed as dist  # noqa: E402

from napari_refsr.archs.registry import arch_of  # noqa: E402
from napari_refsr.errors import RefSRError  # noqa: E402
from .checkpoints import CheckpointManager, export_training_checkpoint, load_training_checkpoint  # noqa: E402
from .config import ARCH_MODEL_KEYS, check_config, load_config, rec_only, set_key  # noqa: E402
from .distributed import Dist, init_distributed  # noqa: E402
from .resume import latest_intact  # noqa: E402
from .trainer import Trainer  # noqa: E402

__all__ = ["main", "parse_args", "build_config"]


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train or fine-tune TTSR or SRNTT (reference-based ×4 super-resolution)",
                                epilog="Any config value can be overridden as section.key=value, "
                                       "e.g. loss.adv=0 train.batch=4 data.noise=[0,0.02].")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    p.add_argument("--config", help="YAML config file, or the name of a shipped one (training/configs: "
                                    "ttsr, ttsr-rec, srntt, refsr-compact)")
    p.add_argument("--model", choices=sorted(ARCH_MODEL_KEYS),
                   help="network to train (model.arch; default ttsr): each starts from its paper's losses")
    p.add_argument("--data", help="training images: CUFED root or a plain folder (data.train)")
    p.add_argument("--ref-dir", help="paired reference folder for a plain folder (data.ref_dir)")
    p.add_argument("--val", help="validation folder: CUFED5 or plain (data.val)")
    p.add_argument("--out", help="run folder (run.out)")
    p.add_argument("--init", help="fine-tune from a registry name or checkpoint (model.init)")
    p.add_argument("--rec-only", action="store_true", help="reconstruction loss only, no warm-up (TTSR-rec)")
    p.add_argument("--steps", type=int, help="stop after this many steps (train.max_steps)")
    p.add_argument("--batch", type=int, help="batch size per process (train.batch)")
    p.add_argument("--device", help="auto, cuda, cpu, ... (train.device)")
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA too")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the run folder (a fresh start when there is none)")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this training checkpoint")
    p.add_argument("--export", help="where to write the inference model (default: <out>/model.pt)")
    p.add_argument("--export-from", metavar="CHECKPOINT",
                   help="only export this training checkpoint (e.g. <out>/checkpoints/best.pt) to --export")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags and key=value overrides in any order."""
    return _parser().parse_intermixed_args(argv)


def _flag_overrides(args) -> list[tuple[str, object]]:
    pairs = [("data.train", args.data), ("data.ref_dir", args.ref_dir), ("data.val", args.val),
             ("run.out", args.out), ("model.init", args.init), ("train.max_steps", args.steps),
             ("train.batch", args.batch), ("train.device", args.device), ("run.export", args.export)]
    out = [(k, v) for k, v in pairs if v is not None]
    if args.no_amp:
        out.append(("train.amp", False))
    return out


def _export_phases(overrides: Sequence[str]) -> int | None:
    """``model.search_phases=N``, the one override an export takes (the exported network's default
    reference phases); anything else is refused rather than silently ignored."""
    phases = None
    for item in overrides:
        key, _, value = item.partition("=")
        if key != "model.search_phases" or not value.isdigit():
            raise RefSRError(f"--export-from takes only model.search_phases=N as an override, got {item!r}")
        phases = int(value)
    return phases


def build_config(args, base: dict | None = None) -> dict:
    overrides = list(args.overrides) + ([f"model.arch={args.model}"] if args.model else [])
    config = load_config(args.config, overrides, base=base)
    for key, value in _flag_overrides(args):
        set_key(config, key, value)
    if args.rec_only:
        rec_only(config)
    return config


def main(argv: Sequence[str] | None = None, *, events=None, should_stop=None) -> int:
    """Run the command line; ``events`` and ``should_stop`` go to the :class:`Trainer` (a GUI's
    live plot and Stop button, see :mod:`training.job`); a RefSRError is also sent as an
    ``error`` event."""
    args = parse_args(argv)
    dist_ctx = Dist()
    try:
        if args.export_from:
            if not args.export:
                raise RefSRError("--export-from needs --export OUT.pt")
            path = export_training_checkpoint(args.export_from, args.export, _export_phases(args.overrides))
            print(f"exported {path}", file=sys.stderr)
            return 0
        config = build_config(args)
        resume = None
        if args.resume or args.resume_from:
            if args.resume_from:
                ckpt_path = Path(args.resume_from).expanduser()
                resume = load_training_checkpoint(ckpt_path)
            else:  # the newest checkpoint that reads (a crash can leave a damaged one)
                folder = Path(config["run"]["out"]).expanduser() / "checkpoints"
                ckpt_path, resume = latest_intact(CheckpointManager(folder).step_files(), load_training_checkpoint,
                                                  lambda msg: print(msg, file=sys.stderr, flush=True))
            if resume is not None:
                stored = arch_of(resume["model_config"])
                if args.model and args.model != stored:
                    raise RefSRError(f"{ckpt_path} is from a {stored} run; resume it with --model {stored} "
                                     "(or without --model)")
                config = build_config(args, base=resume["config"])
        elif CheckpointManager(Path(config["run"]["out"]).expanduser() / "checkpoints").latest() is not None:
            raise RefSRError(f"{config['run']['out']} already holds checkpoints; continue it with --resume "
                             f"or choose another --out")
        check_config(config)
        dist_ctx, device = init_distributed(str(config["train"]["device"]))
        trainer = Trainer(config, dist_ctx=dist_ctx, device=device, resume=resume, events=events,
                          should_stop=should_stop)
        if resume is not None and dist_ctx.main:
            trainer.log(f"resumed from {ckpt_path} at step {trainer.step} (epoch {trainer.epoch})")
        trainer.fit()
    except RefSRError as err:
        print(f"error: {err}", file=sys.stderr)
        if events is not None:
            events({"kind": "error", "message": str(err)})
        return 2
    finally:
        if dist_ctx.active and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
