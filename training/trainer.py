"""One training run (single process or one rank of a DDP job): the loop, validation,
checkpoints and the export at the end. The network is used through its common interface
(:class:`napari_refsr.archs.base.RefSRNetwork`), so every architecture trains here unchanged."""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from napari_refsr import weights
from napari_refsr.archs.convert import load_strict
from napari_refsr.archs.registry import arch_of, build_network
from napari_refsr.archs.vgg import VGG19Features
from napari_refsr.errors import RefSRError
from napari_refsr.files import atomic_write
from .checkpoints import (CheckpointManager, export_model, model_config, network_from_checkpoint,
                                  rng_state, set_rng_state)
from .config import check_config, network_config
from .data import EpochSampler, build_train_set, eval_items
from .distributed import Dist
from .evaluate import evaluate_network
from .logs import LOG_FIELDS, LOSS_KEYS, VAL_FIELDS, CsvLog, open_tensorboard
from .plot import log_interval, plot_curves
from .resume import (apply_optimizer_settings, changed_settings, check_changes, describe, epoch_position,
                             fresh_settings)
from .losses import (WGANGP, Discriminator, PerceptualLoss, TextureLoss, TransferalPerceptualLoss,
                             load_vgg19_state, reconstruction_loss)

__all__ = ["Trainer"]


class Trainer:
    """One training run (single process or one rank of a DDP job)."""

    def __init__(self, config: dict, *, dist_ctx: Dist, device: torch.device, resume: dict | None = None,
                 log=None, events: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        """``events(dict)`` hears the run on the main process — ``start`` (step, total), ``step``
        (step, total, loss and its terms), ``val`` (the validation row), ``done`` (step, export,
        val, stopped) — for a GUI's plot and progress. ``should_stop()`` is asked after every
        step (on the main process, its answer shared by all); True ends the run as if it had
        reached its last step: it validates, checkpoints and exports."""
        self.events, self.should_stop, self.stopped = events, should_stop, False
        self.cfg = check_config(config)
        self.dist, self.device = dist_ctx, device
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.changes = {}  # settings that differ from the resumed checkpoint's (training/resume.py)
        if resume is not None:
            self.changes = changed_settings(resume["config"], self.cfg)
            check_changes(self.changes, discriminator_restored=resume.get("discriminator") is not None
                          and float(self.cfg["loss"]["adv"]) > 0)
        tr, lw = self.cfg["train"], self.cfg["loss"]
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
        self._build_data(seed)  # first: bad folders fail before anything heavy is built
        vgg_state = self._vgg_state(resume)
        self.net = self._build_network(resume, vgg_state).to(device)
        self.net.train()
        self._build_losses(vgg_state)
        self._build_optimisers()
        self._setup_precision()
        self.engine = self.net  # what the forward pass calls: the network, or its DDP wrapper
        if dist_ctx.active:
            self.engine = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(tr["find_unused_parameters"]))
        self._setup_run_state(resume, seed)
        self._open_logs()

    # -- construction ---------------------------------------------------------------------

    def _build_data(self, seed: int) -> None:
        d, dist_ctx = self.cfg["data"], self.dist
        self.batch = int(self.cfg["train"]["batch"])
        self.dataset = build_train_set(d, seed=seed)
        self.sampler = EpochSampler(len(self.dataset), seed=seed, rank=dist_ctx.rank, world=dist_ctx.world)
        self.steps_per_epoch = self.sampler.per_rank() // self.batch
        if self.steps_per_epoch < 1:
            raise RefSRError(f"the training data give {len(self.dataset)} samples per epoch, fewer than one batch "
                             f"({self.batch} × {dist_ctx.world} process(es)); add images or lower train.batch")
        self.loader = DataLoader(self.dataset, batch_size=self.batch, sampler=self.sampler, drop_last=True,
                                 num_workers=int(d["workers"]), pin_memory=self.device.type == "cuda",
                                 generator=torch.Generator())  # keeps the global RNG untouched
        self.has_val = bool(d["val"])  # the same on every process: validation is collective
        self._last_val, self.last_val = -1, None
        self.val_items = []
        if self.has_val and dist_ctx.main:
            self.val_items = eval_items(d["val"], level=d["val_level"], ref_dir=d["val_ref_dir"],
                                        crop=d["val_crop"], max_images=d["val_max_images"],
                                        percentiles=tuple(d["percentiles"]), reference=d["val_reference"])

    def _vgg_state(self, resume: dict | None):
        """VGG19 weights when the perceptual loss or a fresh network's extractor needs them."""
        need_vgg = self.w["per"] > 0 or (resume is None and not self.cfg["model"]["init"])
        vgg_state = load_vgg19_state(self.cfg["model"]["vgg_weights"]) if need_vgg else None
        if need_vgg and vgg_state is None and self.dist.main:
            warnings.warn("model.vgg_weights is null: the LTE starts from random VGG19 weights and learns "
                          "from scratch (fine with a reconstruction loss); SRNTT's matching and the "
                          "perceptual loss would use random features", UserWarning)
        return vgg_state

    def _build_losses(self, vgg_state) -> None:
        lw, device = self.cfg["loss"], self.device
        extractor = self.net.texture_extractor
        self.perceptual = PerceptualLoss(VGG19Features(vgg_state)).to(device) if self.w["per"] > 0 else None
        self.tpl = (TransferalPerceptualLoss(extractor, use_S=bool(lw["tpl_use_S"]), kind=lw["tpl_type"]).to(device)
                    if self.w["tpl"] > 0 else None)
        self.tex = (TextureLoss(use_S=lw["tex_use_S"], weight_scale=float(lw["tex_S_scale"]),
                                weight_bias=float(lw["tex_S_bias"])) if self.w["tex"] > 0 else None)

    def _build_optimisers(self) -> None:
        opt, lw = self.cfg["optim"], self.cfg["loss"]
        groups = self.net.parameter_groups(float(opt["lr"]), float(opt["lr_lte"]))
        self.optimizer = torch.optim.Adam(groups, betas=tuple(opt["betas"]), eps=float(opt["eps"]))
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(1, int(opt["decay"])),
                                                         gamma=float(opt["gamma"]))
        self.D = self.opt_d = self.gan = None
        if self.w["adv"] > 0:
            self.D = Discriminator(int(self.cfg["data"]["crop"])).to(self.device)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=float(opt["lr_dis"]), betas=tuple(opt["betas_dis"]),
                                          eps=float(opt["eps"]))
            self.gan = WGANGP(self.D, self.opt_d, k=int(lw["gan_k"]), gp=float(lw["gp"]),
                              reduce_grads=self.dist.average_grads)
            self.D.requires_grad_(False)

    def _setup_precision(self) -> None:
        """Mixed precision: on CUDA by default (bf16 where supported, else fp16 with loss scaling);
        on the CPU only when train.amp_dtype names a dtype (rarely faster there, but the same
        autocast and loss-scaling code as on a GPU, which the CPU tests exercise)."""
        tr, device = self.cfg["train"], self.device
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

    def _setup_run_state(self, resume: dict | None, seed: int) -> None:
        tr = self.cfg["train"]
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
            torch.manual_seed(seed + 1000 * self.dist.rank)

    def _open_logs(self) -> None:
        self.train_log = self.val_log = self.tb = None
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            keep = self.step if self.resumed else None
            self.train_log = CsvLog(self.out / "log.csv", LOG_FIELDS, keep)
            self.val_log = CsvLog(self.out / "val.csv", VAL_FIELDS, keep)
            self.tb = open_tensorboard(self.out / "tb")
            config_text = yaml.safe_dump(self.cfg, sort_keys=False).encode()
            atomic_write(self.out / "config.yaml", lambda f: f.write(config_text))
            self.ckpts.remove_partial()

    def _build_network(self, resume: dict | None, vgg_state) -> torch.nn.Module:
        m = self.cfg["model"]
        if resume is not None:
            found = arch_of(resume["model_config"])
            if found != self.arch:
                raise RefSRError(f"the checkpoint to resume holds a {found} network, but model.arch is {self.arch}; "
                                 f"resume it with --model {found}")
            return network_from_checkpoint(resume)
        if m["init"]:
            path = weights.resolve(str(m["init"]), what="model.init")
            ckpt = weights.read_checkpoint(path)
            found = arch_of(ckpt.config)
            if found != self.arch:
                raise RefSRError(f"model.init {path} holds a {found} network, but model.arch is {self.arch}; "
                                 f"fine-tune it with --model {found}")
            net = build_network(ckpt.config)
            load_strict(net, ckpt.state_dict, f"cannot fine-tune from {path}: its weights do not fit {ckpt.config}",
                        RefSRError)
            if self.dist.main:
                self.log(f"fine-tuning from {path} ({ckpt.source_format} format, config {ckpt.config})")
            return net
        net = build_network(network_config(m))
        if vgg_state is not None:  # TTSR: the LTE's start; SRNTT: its fixed matching space
            net.load_vgg19(vgg_state)
        return net

    # -- state ----------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything a resumed run needs (collective: every process contributes its RNG)."""
        rngs = self.dist.gather(rng_state())
        return {
            "config": self.cfg, "model_config": model_config(self.net),
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
        new_optim = any(k.startswith("optim.") for k in self.changes)  # else the stored values, bit for bit
        if new_optim:
            opt = self.cfg["optim"]
            apply_optimizer_settings(self.optimizer, fresh, scheduler=self.scheduler,
                                     step_size=max(1, int(opt["decay"])), gamma=float(opt["gamma"]))
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        if self.D is not None and s.get("discriminator") is not None:
            self.D.load_state_dict(s["discriminator"])
            self.opt_d.load_state_dict(s["optimizer_d"])
            if new_optim:
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

    def _emit(self, kind: str, **fields) -> None:
        if self.events is not None and self.dist.main:
            self.events({"kind": kind, **fields})

    def _stop_requested(self) -> bool:
        if self.should_stop is None:
            return False
        self.stopped = bool(self.dist.broadcast(bool(self.should_stop()) if self.dist.main else None))
        return self.stopped

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
            extractor = self.net.texture_extractor
            sr = out.sr
            rec = self.w["rec"] * reconstruction_loss(sr.float(), b["hr"], self.rec_type)
            loss = rec
            values["rec"] = float(rec.detach())
            if full and self.perceptual is not None:
                per = self.w["per"] * self.perceptual(sr, b["hr"])
                loss = loss + per
                values["per"] = float(per.detach())
            if full and self.tpl is not None:
                tpl = self.w["tpl"] * self.tpl(extractor, sr, out.S, *out.textures)
                loss = loss + tpl
                values["tpl"] = float(tpl.detach())
            if full and self.tex is not None:  # through the network's own frozen extractor, which M comes from
                tex = self.w["tex"] * self.tex(extractor, sr, out.S, *out.textures)
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
            self._emit("val", **result)
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
        val_every, ckpt_every = int(run["val_every"] or 0), int(run["ckpt_every"] or 0)
        log_every = log_interval(int(run["log_every"]), self.total_steps())
        if self.dist.main:
            n_train = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
            precision = f", mixed precision {str(self.amp_dtype).split('.')[-1]}" if self.amp_dtype else ""
            self.log(f"training {self.arch} ({n_train:,} trainable parameters) on {self.device}"
                     f"{f' × {self.dist.world} processes' if self.dist.active else ''}{precision}; "
                     f"{len(self.dataset)} samples "
                     f"per epoch, {self.steps_per_epoch} steps per epoch per process; "
                     f"{'resumed at step ' + str(self.step) if self.resumed else 'fresh start'}")
        self._emit("start", step=self.step, total=self.total_steps())
        if not self.resumed and self.has_val and bool(run["val_at_start"]):
            self.validate()
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps(), initial=self.step, disable=not (self.dist.main and run["progress"]),
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        acc: dict[str, list[float]] = {}
        t_start = time.perf_counter()
        busy, samples = 0.0, 0  # data + optimisation time and samples since the last log row
        while not self._done() and not self.stopped:
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
                self._emit("step", step=self.step, total=self.total_steps(), **values)
                if self.step % log_every == 0:
                    self._log_row(acc, full, samples, busy, t_start)
                    acc, busy, samples = {}, 0.0, 0
                if val_every and self.step % val_every == 0:
                    self._validate_and_keep_best()
                if ckpt_every and self.step % ckpt_every == 0 and self._last_saved != self.step:
                    self.save()
                if (self.max_steps is not None and self.step >= self.max_steps) or self._stop_requested():
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
            self.log(f"{'stopped' if self.stopped else 'done'} at step {self.step}; exported {exported}")
            self._emit("done", step=self.step, export=str(exported), val=result, stopped=self.stopped)
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
