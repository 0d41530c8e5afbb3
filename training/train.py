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
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from napari_refsr import weights  # noqa: E402
from napari_refsr.devices import choose_device  # noqa: E402
from napari_refsr.errors import RefSRError  # noqa: E402
from napari_refsr.model import build_network  # noqa: E402
from napari_refsr.weights import atomic_write  # noqa: E402
from training.checkpoints import (CheckpointManager, load_training_checkpoint, rng_state,  # noqa: E402
                                  set_rng_state)
from training.config import ARCH_MODEL_KEYS, check_config, load_config, network_config, rec_only, set_key  # noqa: E402
from training.data import EpochSampler, build_train_set, eval_items  # noqa: E402
from training.evaluate import evaluate_network  # noqa: E402
from training.losses import (WGANGP, Discriminator, PerceptualLoss, TextureLoss,  # noqa: E402
                             TransferalPerceptualLoss, VGG19Features, load_vgg19_state, reconstruction_loss)
from training.plot import plot_curves  # noqa: E402
from training.resume import (apply_optimizer_settings, changed_settings, check_changes, describe,  # noqa: E402
                             epoch_position, fresh_settings, latest_intact)

__all__ = ["main", "Trainer", "export_model"]

LOSS_KEYS = ("loss", "rec", "per", "tpl", "tex", "adv", "d")
LOG_FIELDS = ["step", "epoch", "phase", *LOSS_KEYS, "lr", "lr_lte", "samples_per_s", "elapsed_s"]
VAL_FIELDS = ["step", "epoch", "psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "n"]


# ----------------------------------------------------------------------------- processes


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_grads(self, module: torch.nn.Module) -> None:
        """Mean gradients over processes (the critic, which is not wrapped in DDP because
        its gradient penalty differentiates through its own gradients)."""
        if not self.active:
            return
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one: nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    base = choose_device(device_name)
    if world <= 1:
        return Dist(), base
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local), device


# ----------------------------------------------------------------------------- model creation


def _resolve_weights(source: str) -> Path:
    path = Path(str(source)).expanduser()
    if path.is_file():
        return path
    if str(source) in weights.REGISTRY:
        return weights.fetch(str(source))
    raise RefSRError(f"model.init {source!r} is neither a checkpoint file nor a registry name "
                     f"({', '.join(sorted(weights.REGISTRY))})")


def _model_config(net: torch.nn.Module) -> dict:
    cfg = net.config
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def export_model(net: torch.nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write the inference checkpoint (weights + architecture) that ``load_model`` reads."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return weights.save_checkpoint(path, state, _model_config(net), dict(meta or {}))


def export_training_checkpoint(ckpt_path: str | Path, out: str | Path) -> Path:
    """Export the network of a training checkpoint (e.g. ``best.pt``) for inference."""
    state = load_training_checkpoint(ckpt_path)
    net = build_network(state["model_config"])
    net.load_state_dict(state["model"])
    meta = dict(state.get("meta", {}), step=state["step"], epoch=state["epoch"], source=str(ckpt_path))
    return export_model(net, out, meta)


# ----------------------------------------------------------------------------- CSV logs


class CsvLog:
    """Append-only CSV with a header; on resume, rows after the resumed step are dropped.

    That rewrite is atomic (a kill during it leaves the old log, never an empty one)."""

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


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV and PNG only
        return None
    return SummaryWriter(str(folder))


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """One training run (single process or one rank of a DDP job)."""

    def __init__(self, config: dict, *, dist_ctx: Dist, device: torch.device, resume: dict | None = None,
                 log=None):
        self.cfg = check_config(config)
        self.dist, self.device = dist_ctx, device
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.changes = {}  # settings that differ from the resumed checkpoint's (training/resume.py)
        if resume is not None:
            self.changes = changed_settings(resume["config"], self.cfg)
            check_changes(self.changes, discriminator_restored=resume.get("discriminator") is not None
                          and float(self.cfg["loss"]["adv"]) > 0)
        tr, d, lw, opt = self.cfg["train"], self.cfg["data"], self.cfg["loss"], self.cfg["optim"]
        self.out = Path(self.cfg["run"]["out"]).expanduser()
        if tr["threads"]:
            torch.set_num_threads(int(tr["threads"]))
        seed = int(tr["seed"])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # the same initial weights on every process
        self.arch = str(self.cfg["model"]["arch"])
        self.w = {k: float(lw[k]) for k in ("rec", "per", "tpl", "tex", "adv")}
        self.rec_type = str(lw["rec_type"])

        # data first: bad folders fail before anything heavy is built
        self.batch = int(tr["batch"])
        self.dataset = build_train_set(d, seed=seed)
        self.sampler = EpochSampler(len(self.dataset), seed=seed, rank=dist_ctx.rank, world=dist_ctx.world)
        self.steps_per_epoch = self.sampler.per_rank() // self.batch
        if self.steps_per_epoch < 1:
            raise RefSRError(f"the training data give {len(self.dataset)} samples per epoch, fewer than one batch "
                             f"({self.batch} × {dist_ctx.world} process(es)); add images or lower train.batch")
        self.loader = DataLoader(self.dataset, batch_size=self.batch, sampler=self.sampler, drop_last=True,
                                 num_workers=int(d["workers"]), pin_memory=device.type == "cuda",
                                 generator=torch.Generator())  # keeps the global RNG untouched
        self.has_val = bool(d["val"])  # the same on every process: validation is collective
        self._last_val, self.last_val = -1, None
        self.val_items = []
        if self.has_val and dist_ctx.main:
            self.val_items = eval_items(d["val"], level=d["val_level"], ref_dir=d["val_ref_dir"],
                                        crop=d["val_crop"], max_images=d["val_max_images"],
                                        percentiles=tuple(d["percentiles"]))

        # network
        need_vgg = self.w["per"] > 0 or (resume is None and not self.cfg["model"]["init"])
        vgg_state = load_vgg19_state(self.cfg["model"]["vgg_weights"]) if need_vgg else None
        if need_vgg and vgg_state is None and self.dist.main:
            warnings.warn("model.vgg_weights is null: the LTE starts from random VGG19 weights and learns "
                          "from scratch (fine with a reconstruction loss); SRNTT's matching and the "
                          "perceptual loss would use random features", UserWarning)
        self.net = self._build_network(resume, vgg_state).to(device)
        self.net.train()

        # losses and optimisers
        self.perceptual = PerceptualLoss(VGG19Features(vgg_state)).to(device) if self.w["per"] > 0 else None
        self.tpl = (TransferalPerceptualLoss(self.net.LTE, use_S=bool(lw["tpl_use_S"]), kind=lw["tpl_type"]).to(device)
                    if self.w["tpl"] > 0 else None)
        self.tex = (TextureLoss(use_S=lw["tex_use_S"], weight_scale=float(lw["tex_S_scale"]),
                                weight_bias=float(lw["tex_S_bias"])) if self.w["tex"] > 0 else None)
        if self.arch == "ttsr":  # the LTE learns at its own rate
            groups = [{"params": [p for p in self.net.MainNet.parameters() if p.requires_grad], "lr": float(opt["lr"])},
                      {"params": [p for p in self.net.LTE.parameters() if p.requires_grad], "lr": float(opt["lr_lte"])}]
        else:  # SRNTT: everything but the frozen VGG19
            groups = [{"params": [p for p in self.net.parameters() if p.requires_grad], "lr": float(opt["lr"])}]
        self.optimizer = torch.optim.Adam(groups, betas=tuple(opt["betas"]), eps=float(opt["eps"]))
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(1, int(opt["decay"])),
                                                         gamma=float(opt["gamma"]))
        self.D = self.opt_d = self.gan = None
        if self.w["adv"] > 0:
            self.D = Discriminator(int(d["crop"])).to(device)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=float(opt["lr_dis"]), betas=tuple(opt["betas_dis"]),
                                          eps=float(opt["eps"]))
            self.gan = WGANGP(self.D, self.opt_d, k=int(lw["gan_k"]), gp=float(lw["gp"]),
                              reduce_grads=self.dist.average_grads)
            self.D.requires_grad_(False)

        # mixed precision: on CUDA by default (bf16 where supported, else fp16 with loss scaling);
        # on the CPU only when train.amp_dtype names a dtype (rarely faster there, but the same
        # autocast and loss-scaling code as on a GPU, which the CPU tests exercise)
        self.amp_dtype = None
        want = tr["amp_dtype"]
        if bool(tr["amp"]) and device.type == "cuda":
            if want == "auto":
                want = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            self.amp_dtype = getattr(torch, want)
            torch.backends.cudnn.benchmark = True
        elif bool(tr["amp"]) and device.type == "cpu" and want != "auto":
            self.amp_dtype = getattr(torch, want)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        # model wrapper for DDP
        self.engine = self.net
        if dist_ctx.active:
            self.engine = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(tr["find_unused_parameters"]))

        # run state
        self.step, self.epoch, self.epoch_step = 0, 0, 0
        self.best_psnr = -math.inf
        self.init_epochs, self.total_epochs = int(tr["init_epochs"]), int(tr["init_epochs"]) + int(tr["epochs"])
        self.max_steps = int(tr["max_steps"]) if tr["max_steps"] is not None else None
        self.ckpts = CheckpointManager(self.out / "checkpoints", int(self.cfg["run"]["keep_last"]))
        self._last_saved = -1
        self.resumed = resume is not None
        if resume is not None:
            self._restore(resume)
        if resume is None:  # per-process random draws (e.g. the gradient penalty's mixing)
            torch.manual_seed(seed + 1000 * dist_ctx.rank)
        self.train_log = self.val_log = self.tb = None
        if dist_ctx.main:
            self.out.mkdir(parents=True, exist_ok=True)
            keep = self.step if self.resumed else None
            self.train_log = CsvLog(self.out / "log.csv", LOG_FIELDS, keep)
            self.val_log = CsvLog(self.out / "val.csv", VAL_FIELDS, keep)
            self.tb = _tensorboard(self.out / "tb")
            config_text = yaml.safe_dump(self.cfg, sort_keys=False).encode()
            atomic_write(self.out / "config.yaml", lambda f: f.write(config_text))
            self.ckpts.remove_partial()

    # -- construction / state -------------------------------------------------------------

    def _build_network(self, resume: dict | None, vgg_state) -> torch.nn.Module:
        m = self.cfg["model"]
        if resume is not None:
            found = resume["model_config"].get("arch", "ttsr")
            if found != self.arch:
                raise RefSRError(f"the checkpoint to resume holds a {found} network, but model.arch is {self.arch}; "
                                 f"resume it with --model {found}")
            net = build_network(resume["model_config"])
            net.load_state_dict(resume["model"])
            return net
        if m["init"]:
            path = _resolve_weights(str(m["init"]))
            ckpt = weights.read_checkpoint(path)
            found = ckpt.config.get("arch", "ttsr")
            if found != self.arch:
                raise RefSRError(f"model.init {path} holds a {found} network, but model.arch is {self.arch}; "
                                 f"fine-tune it with --model {found}")
            net = build_network(ckpt.config)
            try:
                net.load_state_dict(ckpt.state_dict, strict=True)
            except RuntimeError as err:
                raise RefSRError(f"cannot fine-tune from {path}: its weights do not fit {ckpt.config} "
                                 f"({str(err).splitlines()[0][:200]})") from None
            if self.dist.main:
                self.log(f"fine-tuning from {path} ({ckpt.source_format} format, config {ckpt.config})")
            return net
        net = build_network(network_config(m))
        if vgg_state is not None:  # TTSR: the LTE's start; SRNTT: its fixed matching space
            (net.LTE.load_vgg19 if self.arch == "ttsr" else net.load_vgg19)(vgg_state)
        return net

    def state(self) -> dict:
        """Everything a resumed run needs (collective: every process contributes its RNG)."""
        rngs = self.dist.gather(rng_state())
        return {
            "config": self.cfg, "model_config": _model_config(self.net),
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "discriminator": self.D.state_dict() if self.D is not None else None,
            "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
            "best_psnr": self.best_psnr, "world": self.dist.world, "rng": rngs,
            "meta": {"data": str(self.cfg["data"]["train"]), "init": self.cfg["model"]["init"]},
        }

    def _restore(self, s: dict) -> None:
        fresh, fresh_d = fresh_settings(self.optimizer), fresh_settings(self.opt_d) if self.opt_d else None
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        if any(k.startswith("optim.") for k in self.changes):  # else the stored values, bit for bit
            opt = self.cfg["optim"]
            apply_optimizer_settings(self.optimizer, fresh, scheduler=self.scheduler,
                                     step_size=max(1, int(opt["decay"])), gamma=float(opt["gamma"]))
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        if self.D is not None and s.get("discriminator") is not None:
            self.D.load_state_dict(s["discriminator"])
            self.opt_d.load_state_dict(s["optimizer_d"])
            if any(k.startswith("optim.") for k in self.changes):
                apply_optimizer_settings(self.opt_d, fresh_d)
        elif self.D is not None and self.dist.main:
            warnings.warn("the checkpoint has no discriminator (it was trained with loss.adv=0): "
                          "the adversarial loss starts with a fresh critic", UserWarning)
        self.step, self.epoch, self.epoch_step = int(s["step"]), int(s["epoch"]), int(s["epoch_step"])
        self._last_saved = self._last_val = self.step  # this step's checkpoint (and validation) exist
        self.best_psnr = float(s["best_psnr"])
        rngs = s["rng"]
        if len(rngs) != self.dist.world:
            warnings.warn(f"resuming a {len(rngs)}-process run with {self.dist.world} process(es): "
                          "the data order continues, random draws do not repeat exactly", UserWarning)
        self.epoch_step, note = epoch_position(self.epoch_step, old_batch=int(s["config"]["train"]["batch"]),
                                               old_world=len(rngs), batch=self.batch, world=self.dist.world,
                                               steps_per_epoch=self.steps_per_epoch)
        if self.dist.main and self.changes:
            self.log(f"resume: applied {describe(self.changes)}" + (f"; {note}" if note else ""))
        set_rng_state(rngs[self.dist.rank % len(rngs)])

    def save(self, *, best: bool = False) -> None:
        state = self.state()
        if self.dist.main:
            self.ckpts.save(state, self.step, best=best)
        self._last_saved = self.step
        self.dist.barrier()

    # -- one optimisation step ------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(self, batch: dict, full: bool) -> dict[str, float]:
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        values: dict[str, float] = {}
        with self._autocast():
            out = self.engine(b["lr"], b["lr_up"], b["ref"], b["ref_down_up"])
            sr = out.sr
            rec = self.w["rec"] * reconstruction_loss(sr.float(), b["hr"], self.rec_type)
            loss = rec
            values["rec"] = float(rec.detach())
            if full and self.perceptual is not None:
                per = self.w["per"] * self.perceptual(sr, b["hr"])
                loss = loss + per
                values["per"] = float(per.detach())
            if full and self.tpl is not None:
                tpl = self.w["tpl"] * self.tpl(self.net.LTE, sr, out.S, out.T_lv3, out.T_lv2, out.T_lv1)
                loss = loss + tpl
                values["tpl"] = float(tpl.detach())
            if full and self.tex is not None:  # through SRNTT's own frozen VGG, which M comes from
                tex = self.w["tex"] * self.tex(self.net.vgg, sr, out.S, out.M_lv3, out.M_lv2, out.M_lv1)
                loss = loss + tex
                values["tex"] = float(tex.detach())
        if full and self.gan is not None:
            with torch.autocast(device_type=self.device.type, enabled=False):
                values["d"] = self.gan.discriminator_steps(sr, b["hr"])
            with self._autocast():
                adv = self.w["adv"] * self.gan.generator_loss(sr)
            loss = loss + adv
            values["adv"] = float(adv.detach())
        if not torch.isfinite(loss.detach()) and not self.scaler.is_enabled():
            raise RefSRError(f"the loss became {float(loss)} at step {self.step + 1}; lower optim.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values["loss"] = float(loss.detach())
        return values

    # -- validation -----------------------------------------------------------------------

    def validate(self) -> dict | None:
        """Rank 0 evaluates; every process learns the result (collective)."""
        result = None
        self._last_val = self.step
        if self.dist.main and self.val_items:
            res = evaluate_network(self.net, self.val_items, device=self.device, amp_dtype=self.amp_dtype)
            self.net.train()
            result = {k: res[k] for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "n")}
            result.update(step=self.step, epoch=self.epoch)
            self.val_log.append(result)
            if self.tb is not None:
                for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic"):
                    self.tb.add_scalar(f"val/{k}", result[k], self.step)
            self.log(f"step {self.step}: val PSNR {result['psnr']:.3f} dB / SSIM {result['ssim']:.4f} "
                     f"(bicubic {result['psnr_bicubic']:.3f} / {result['ssim_bicubic']:.4f}, {result['n']} images)")
            self.plot()
        self.last_val = self.dist.broadcast(result)
        return self.last_val

    def _validate_and_keep_best(self) -> None:
        result = self.validate()
        if result is not None and result["psnr"] > self.best_psnr:
            self.best_psnr = result["psnr"]
            self.save(best=True)

    def plot(self) -> None:
        if self.dist.main and self.train_log is not None:
            plot_curves(self.out / "curves.png", self.train_log.read(), self.val_log.read(), LOSS_KEYS)

    # -- the loop -------------------------------------------------------------------------

    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.total_epochs
        return min(total, self.max_steps) if self.max_steps is not None else total

    def _done(self) -> bool:
        return self.epoch >= self.total_epochs or (self.max_steps is not None and self.step >= self.max_steps)

    def fit(self) -> dict:
        run = self.cfg["run"]
        val_every, ckpt_every, log_every = int(run["val_every"] or 0), int(run["ckpt_every"] or 0), max(1, int(run["log_every"]))
        if self.dist.main:
            n_train = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
            precision = f", mixed precision {str(self.amp_dtype).split('.')[-1]}" if self.amp_dtype else ""
            self.log(f"training {self.arch} ({n_train:,} trainable parameters) on {self.device}"
                     f"{f' × {self.dist.world} processes' if self.dist.active else ''}{precision}; "
                     f"{len(self.dataset)} samples "
                     f"per epoch, {self.steps_per_epoch} steps per epoch per process; "
                     f"{'resumed at step ' + str(self.step) if self.resumed else 'fresh start'}")
        if not self.resumed and self.has_val and bool(run["val_at_start"]):
            self.validate()
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps(), initial=self.step, disable=not (self.dist.main and run["progress"]),
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        acc: dict[str, list[float]] = {}
        t_start = time.perf_counter()
        busy, samples = 0.0, 0  # data + optimisation time and samples since the last log row
        while not self._done():
            full = self.epoch >= self.init_epochs
            self.dataset.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, start=self.epoch_step * self.batch)
            t_mark = time.perf_counter()
            for batch in self.loader:
                values = self.train_step(batch, full)
                self.step += 1
                self.epoch_step += 1
                samples += self.batch * self.dist.world
                busy += time.perf_counter() - t_mark
                for k, v in values.items():
                    acc.setdefault(k, []).append(v)
                if self.dist.main:
                    rate = samples / max(busy, 1e-9)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()} | {"samples/s": f"{rate:.2f}"},
                                    refresh=False)
                    bar.update(1)
                if self.step % log_every == 0:
                    self._log_row(acc, full, samples, busy, t_start)
                    acc, busy, samples = {}, 0.0, 0
                if val_every and self.step % val_every == 0:
                    self._validate_and_keep_best()
                if ckpt_every and self.step % ckpt_every == 0 and self._last_saved != self.step:
                    self.save()
                if self.max_steps is not None and self.step >= self.max_steps:
                    break
                t_mark = time.perf_counter()  # validation and checkpoints do not count as training time
            else:  # the epoch ran out
                self.epoch += 1
                self.epoch_step = 0
                if full:
                    self.scheduler.step()
                if self._last_saved != self.step and not self._done():
                    self.save()
        bar.close()
        if acc:
            self._log_row(acc, self.epoch >= self.init_epochs, samples, busy, t_start)
        result = self.validate() if self.has_val and self._last_val != self.step else self.last_val
        if result is not None and result["psnr"] > self.best_psnr:
            self.best_psnr = result["psnr"]
            self.save(best=True)
        elif self._last_saved != self.step:
            self.save()
        self._check_replicas()
        exported = None
        if self.dist.main:
            self.plot()
            exported = Path(run["export"]).expanduser() if run["export"] else self.out / "model.pt"
            meta = {"arch": self.arch, "step": self.step, "epoch": self.epoch, "data": str(self.cfg["data"]["train"]),
                    "init": self.cfg["model"]["init"], "losses": self.w}
            if result is not None:
                meta["val"] = {k: result[k] for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")}
            export_model(self.net, exported, meta)
            self.log(f"done at step {self.step}; exported {exported}")
            if self.tb is not None:
                self.tb.close()
        self.dist.barrier()
        return {"step": self.step, "epoch": self.epoch, "val": result, "export": exported}

    def _log_row(self, acc: dict, full: bool, samples: int, busy: float, t_start: float) -> None:
        if not self.dist.main:
            return
        now = time.perf_counter()
        row = {k: float(np.mean(v)) for k, v in acc.items()}
        row.update(step=self.step, epoch=self.epoch, phase="main" if full else "rec-warmup",
                   lr=self.optimizer.param_groups[0]["lr"],
                   lr_lte=self.optimizer.param_groups[1]["lr"] if len(self.optimizer.param_groups) > 1 else None,
                   samples_per_s=samples / max(busy, 1e-9), elapsed_s=now - t_start)
        self.train_log.append(row)
        if self.tb is not None:
            for k in LOSS_KEYS:
                if k in row:
                    self.tb.add_scalar(f"train/{k}", row[k], self.step)
            self.tb.add_scalar("train/samples_per_s", row["samples_per_s"], self.step)

    def _check_replicas(self) -> None:
        """After DDP training every process must hold the same weights; say so in the log."""
        if not self.dist.active:
            return
        params = list(self.net.parameters()) + (list(self.D.parameters()) if self.D is not None else [])
        sums = self.dist.gather(float(sum(p.detach().double().sum() for p in params)))
        if self.dist.main:
            if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
                raise RuntimeError(f"DDP processes diverged: parameter sums {sums}")
            self.log(f"DDP: {self.dist.world} processes, parameters identical across processes")


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train or fine-tune TTSR or SRNTT (reference-based ×4 super-resolution)",
                                epilog="Any config value can be overridden as section.key=value, "
                                       "e.g. loss.adv=0 train.batch=4 data.noise=[0,0.02].")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    p.add_argument("--config", help="YAML config (see training/configs/ttsr.yaml, srntt.yaml)")
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


def build_config(args, base: dict | None = None) -> dict:
    overrides = list(args.overrides) + ([f"model.arch={args.model}"] if args.model else [])
    config = load_config(args.config, overrides, base=base)
    for key, value in _flag_overrides(args):
        set_key(config, key, value)
    if args.rec_only:
        rec_only(config)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dist_ctx = Dist()
    try:
        if args.export_from:
            if not args.export:
                raise RefSRError("--export-from needs --export OUT.pt")
            path = export_training_checkpoint(args.export_from, args.export)
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
                stored = resume["model_config"].get("arch", "ttsr")
                if args.model and args.model != stored:
                    raise RefSRError(f"{ckpt_path} is from a {stored} run; resume it with --model {stored} "
                                     "(or without --model)")
                config = build_config(args, base=resume["config"])
        elif CheckpointManager(Path(config["run"]["out"]).expanduser() / "checkpoints").latest() is not None:
            raise RefSRError(f"{config['run']['out']} already holds checkpoints; continue it with --resume "
                             f"or choose another --out")
        check_config(config)
        dist_ctx, device = init_distributed(str(config["train"]["device"]))
        trainer = Trainer(config, dist_ctx=dist_ctx, device=device, resume=resume)
        if resume is not None and dist_ctx.main:
            trainer.log(f"resumed from {ckpt_path} at step {trainer.step} (epoch {trainer.epoch})")
        trainer.fit()
    except RefSRError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist_ctx.active and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
