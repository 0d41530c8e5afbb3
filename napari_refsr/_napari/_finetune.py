"""The fine-tune dock widget: adapt a model to your own layers without leaving napari.

A thin shell over the project's trainer: the chosen layers (and/or a folder) are checked and
written as a run's training data (:mod:`training.array_data`: the bottom of each image is held
out for validation), then ``training/train.py`` (installed: ``napari_refsr.training``) runs with
reconstruction loss only in a child process (:mod:`training.job` says why a process and not a
thread). A Qt timer reads the run's events: the loss and the validation PSNR (next to bicubic) are
plotted live, the progress bar follows the steps. Stop lets the run validate, checkpoint and
export; Resume continues it from its last checkpoint. The exported model is added to every upscale
widget's model list at once, "Before / after" upscales a held-out layer ↓4 with the starting and
the fine-tuned model, and "Export bioimage.io" packages the result (:mod:`napari_refsr.zoo`).
Stacks train plane by plane along the chosen Y and X axes (only valid axes are offered)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, Select, SpinBox)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from .. import weights
from ..archs.registry import arch_of
from ..errors import RefSRError
from ..model import DEFAULT_MODEL, load_model
from ..training_package import training_module
from . import _axes
from ._convert import COMPANION_KEY, layer_data, reference_data
from ._widget import BROWSE, announce_model, image_layers, model_choices

__all__ = ["FineTuneWidget", "training_modules"]

log = logging.getLogger(__name__)

LEARNING_RATES = [("1e-4 (default)", 1e-4), ("2e-4", 2e-4), ("5e-5", 5e-5), ("1e-5", 1e-5), ("5e-4", 5e-4)]
DEVICES = ("auto", "cpu", "cuda", "mps")
POLL_MS = 250


def training_modules():
    """(training.array_data, training.job): the source checkout's or the installed package's
    (:mod:`napari_refsr.training_package`)."""
    return training_module("array_data"), training_module("job")


def _bicubic_down(hr: np.ndarray) -> np.ndarray:
    """HR (H, W[, 3]) cropped to multiples of 4, ↓4 with PIL-exact bicubic, in HR's dtype."""
    import torch

    from ..resize import resize_bicubic, resize_uint8

    hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
    size = (hr.shape[0] // 4, hr.shape[1] // 4)
    if hr.dtype == np.uint8:
        return resize_uint8(np.ascontiguousarray(hr), size)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.atleast_3d(hr), -1, 0), dtype=np.float32))
    out = np.moveaxis(resize_bicubic(t, size).numpy(), 0, -1)
    return (out if hr.ndim == 3 else out[..., 0]).astype(hr.dtype)


def _compare(start: str, tuned: str, hr: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Worker body of Before / after: LR = HR↓4, both models, PSNR against HR (HR's window)."""
    import torch

    from ..normalize import intensity_window, to_unit
    from ..pipeline import upscale
    from ..resize import resize_bicubic

    ev = training_module("evaluate")
    hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
    lr = _bicubic_down(hr)
    before = upscale(load_model(start), lr, ref)
    after = upscale(load_model(tuned, cache=False), lr, ref)
    lo, hi = intensity_window(hr)

    def metric(img):
        unit = to_unit(np.atleast_3d(img).astype(np.float32), lo, hi)
        x = torch.from_numpy(np.moveaxis(unit, -1, 0).copy()).expand(3, -1, -1) * 2 - 1
        return ev.metric_image(x, quantize=False, gray=hr.ndim == 2)

    t = torch.from_numpy(np.moveaxis(np.atleast_3d(lr), -1, 0).astype(np.float32).copy())
    bicubic = np.moveaxis(resize_bicubic(t, hr.shape[:2]).numpy(), 0, -1)
    truth = metric(hr)
    psnr = {k: ev.psnr_ssim(metric(v), truth)[0] for k, v in (("bicubic", bicubic), ("before", before),
                                                                 ("after", after))}
    return {"lr": lr, "before": before, "after": after, "psnr": psnr}


def _plane_shape(layer: Image) -> tuple[int, tuple[int, ...]]:
    """The number of non-colour axes of a layer's data and their sizes."""
    shape = tuple(np.shape(layer.data) if not getattr(layer, "multiscale", False) else layer.data[0].shape)
    shape = shape[:-1] if layer.rgb else shape
    return len(shape), shape


class FineTuneWidget(Container):
    """Fine-tune a RefSR model on image layers, with a live loss / validation-PSNR plot."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = viewer
        self._job = None
        self._timer = QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._closed = False
        self._compare_worker = None
        self._export_worker = None
        self.history: dict[str, list[float]] = {}
        self.exported: Path | None = None
        self.last_outcome: str = ""  # "done" | "stopped" | "error" | "crash" of the last run
        self._extra_models: list[str] = []
        self._reset_history()

        self.images = Select(label="Training images", choices=self._image_choices)
        self.y_axis = ComboBox(label="Stack Y axis", choices=self._y_choices,
                               tooltip=f"for stacks: the vertical axis (at least {_axes.MIN_AXIS} px); every "
                                       "plane along the other axes is a training image")
        self.x_axis = ComboBox(label="Stack X axis", choices=self._x_choices,
                               tooltip="for stacks: the horizontal axis")
        self._stack_key: tuple | None = None
        self._refreshing_axes = False
        self._last_y: int | None = None
        self.folder = FileEdit(label="…and/or folder", mode="d", value="", nullable=True,
                               tooltip="a folder of HR images to train on as well (optional)")
        self.references = Select(label="References (optional)", choices=self._image_choices,
                                 tooltip="none: references are drawn from the training images, as "
                                         "training/train.py does for plain folders; else one for all "
                                         "or one per training layer")
        self.model = ComboBox(label="Start from", choices=self._model_choices, value=DEFAULT_MODEL)
        self.steps = SpinBox(label="Steps", min=1, max=1_000_000, value=200,
                             tooltip="optimisation steps (about 1 s each for the default model on a laptop CPU)")
        self.lr = ComboBox(label="Learning rate", choices=LEARNING_RATES, value=1e-4)
        self.crop = SpinBox(label="Crop (HR px)", min=32, max=1024, step=16, value=64,
                            tooltip="HR training crop; the LR crop is a quarter of it")
        self.output = FileEdit(label="Output folder", mode="d", value=str(Path.home() / "napari-refsr" / "finetune"))
        self.advanced = CheckBox(text="Advanced settings", value=False)
        self.batch = SpinBox(label="Batch", min=1, max=256, value=4)
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.val_fraction = FloatSpinBox(label="Held out", min=0.0, max=0.5, step=0.05, value=0.2,
                                         tooltip="fraction of each image's height kept for validation")
        self.val_every = SpinBox(label="Validate every", min=1, max=100_000, value=50,
                                 tooltip="steps between validations and checkpoints")
        self.threads = SpinBox(label="CPU threads", min=0, max=256, value=0, tooltip="0: PyTorch's default")
        self._advanced = [self.batch, self.device, self.val_fraction, self.val_every, self.threads]
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.resume_button = PushButton(text="Resume")
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = Label(label="Status", value="ready")
        self.compare_on = ComboBox(label="Held-out layer", choices=self._image_choices, nullable=True)
        self.compare_button = PushButton(text="Before / after", enabled=False)
        self.export_button = PushButton(text="Export bioimage.io", enabled=False)
        runs = Container(layout="horizontal", labels=False,
                         widgets=[self.start_button, self.stop_button, self.resume_button])
        after = Container(layout="horizontal", labels=False, widgets=[self.compare_button, self.export_button])
        self.extend([self.images, self.y_axis, self.x_axis, self.folder, self.references, self.model, self.steps,
                     self.lr, self.crop, self.output, self.advanced, *self._advanced, runs, self.progress, self.status,
                     self.compare_on, after])
        self._build_plot()
        self._show_advanced(False)
        self._refresh_axes()

        self.advanced.changed.connect(self._show_advanced)
        self.images.changed.connect(self._refresh_axes)
        self.y_axis.changed.connect(self._on_y_changed)
        self.model.changed.connect(self._on_model_changed)
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.resume_button.changed.connect(self.resume)
        self.compare_button.changed.connect(self.before_after)
        self.export_button.changed.connect(self.export_bioimageio)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self.native.destroyed.connect(self._on_destroyed)

    # ----------------------------------------------------------------------------- widgets

    def _build_plot(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.loss_ax, self.psnr_ax = self.figure.subplots(2, 1, sharex=True)
        (self.loss_line,) = self.loss_ax.plot([], [], color="tab:blue", lw=1)
        (self.psnr_line,) = self.psnr_ax.plot([], [], "o-", color="tab:orange", ms=3, label="model")
        (self.bicubic_line,) = self.psnr_ax.plot([], [], "--", color="gray", lw=1, label="bicubic")
        self.loss_ax.set_ylabel("training loss")
        self.psnr_ax.set_ylabel("val PSNR (dB)")
        self.psnr_ax.set_xlabel("step")
        self.psnr_ax.legend(loc="lower right", fontsize="small")
        self.native.layout().addWidget(self.canvas)

    def _show_advanced(self, on: bool) -> None:
        for w in self._advanced:
            w.visible = bool(on)

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in image_layers(self._viewer)]

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        return model_choices(self._extra_models)

    def _on_model_changed(self, value: str) -> None:
        if value != BROWSE:
            return
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Start from a checkpoint", str(Path.home()),
                                              "Checkpoints (*.pt *.pth *.safetensors *.zip);;All files (*)")
        self.model.value = self.add_model(path) if path else DEFAULT_MODEL

    def add_model(self, path: str) -> str:
        """Put a checkpoint file into the start-model list (what Browse does); returns its key."""
        text = str(Path(path).expanduser())
        if text not in self._extra_models:
            self._extra_models.insert(0, text)
        self.model.reset_choices()
        return text

    def _refresh_layers(self, *_) -> None:
        if self._closed:
            return
        for w in (self.images, self.references, self.compare_on):
            w.reset_choices()
        self._refresh_axes()

    # ----------------------------------------------------------------------------- stack axes

    def _stacks(self) -> list[Image]:
        """The chosen training layers with more than two spatial axes."""
        return [layer for layer in self.images.value if _plane_shape(layer)[0] > 2]

    def _axis_info(self) -> tuple[tuple[int, ...], tuple[str, ...], list[int]] | None:
        """The first stack's spatial shape and labels, and the axes every chosen stack of its
        dimensionality can use as Y or X (None: no stack)."""
        stacks = self._stacks()
        if not stacks:
            return None
        ndim, shape = _plane_shape(stacks[0])
        labels = tuple(str(label) for label in stacks[0].axis_labels)[:ndim]
        allowed = set(_axes.spatial_choices(shape))
        for layer in stacks[1:]:
            n, other = _plane_shape(layer)
            if n == ndim:
                allowed &= set(_axes.spatial_choices(other))
        return shape, labels, sorted(allowed)

    def _y_choices(self, _widget=None) -> list[tuple[str, int]]:
        """Axes long enough to be Y in every chosen stack (a 5-plane Z axis is not offered)."""
        info = self._axis_info()
        return [(_axes.axis_name(info[0], info[1], a), a) for a in info[2]] if info else []

    def _x_choices(self, _widget=None) -> list[tuple[str, int]]:
        y = self.y_axis.value if hasattr(self, "y_axis") else None
        return [c for c in self._y_choices() if c[1] != y]

    def _refresh_axes(self, *_) -> None:
        """Y / X follow the chosen stacks (hidden without one); a new set of stacks gets the
        defaults: the last two axes that are long enough."""
        stacks = self._stacks()
        for w in (self.y_axis, self.x_axis):
            w.visible = bool(stacks)
        key = tuple(id(layer) for layer in stacks)
        y, x = self.y_axis.value, self.x_axis.value
        self._refreshing_axes = True
        try:
            self.y_axis.reset_choices()
            candidates = [a for _, a in self._y_choices()]
            if key != self._stack_key:
                self._stack_key = key
                y, x = (candidates[-2], candidates[-1]) if len(candidates) >= 2 else (None, None)
            if y in candidates:
                self.y_axis.value = y
            self._follow_y(x)
        finally:
            self._refreshing_axes = False

    def _follow_y(self, preferred_x: int | None) -> None:
        self.x_axis.reset_choices()
        allowed = [a for _, a in self._x_choices()]
        if allowed:
            self.x_axis.value = preferred_x if preferred_x in allowed else allowed[-1]
        self._last_y = self.y_axis.value

    def _on_y_changed(self, *_) -> None:
        if self._refreshing_axes:
            return
        # choosing the current X as Y swaps the two
        self._follow_y(self._last_y if self.x_axis.value == self.y_axis.value else self.x_axis.value)

    def _stack_yx_last(self, layer: Image, data: np.ndarray) -> np.ndarray:
        """A stack with the chosen Y and X moved to the end (before the colour axis), as the
        training data writer reads stacks; RefSRError in the user's terms for a bad choice."""
        ndim, shape = _plane_shape(layer)
        if ndim <= 2:
            return data
        info = self._axis_info()
        first = self._stacks()[0]
        if ndim != len(info[0]):
            raise RefSRError(f"the stacks {first.name!r} and {layer.name!r} have different numbers of axes "
                             f"({len(info[0])} and {ndim}); one Y / X choice fits both only when they match: "
                             "train them in separate runs")
        labels = tuple(str(label) for label in layer.axis_labels)[:ndim]
        _axes.check_axes(shape, labels, self.y_axis.value, self.x_axis.value, None, layer.name)
        return np.moveaxis(data, (self.y_axis.value, self.x_axis.value), (ndim - 2, ndim - 1))

    # ----------------------------------------------------------------------------- running

    @property
    def running(self) -> bool:
        """True while a training run is going (its child process has not reported its end)."""
        return self._job is not None

    @property
    def run_folder(self) -> Path:
        return Path(str(self.output.value)).expanduser()

    def _array_images(self, array_data) -> list:
        """The training layers and the folder's images, as the trainer's data writer takes them."""
        from ..imageio import SUFFIXES, read_image

        out = []
        for layer in self.images.value:
            data = self._stack_yx_last(layer, np.asarray(layer_data(layer, "training")))
            out.append(array_data.ArrayImage(layer.name, data, bool(layer.rgb)))
        folder = self.folder.value
        if folder not in (None, "") and str(folder) not in ("", "."):
            root = Path(str(folder)).expanduser()
            if not root.is_dir():
                raise RefSRError(f"training folder {root} does not exist")
            for path in sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES):
                data = read_image(path)
                out.append(array_data.ArrayImage(path.stem, data, data.ndim == 3 and data.shape[-1] in (3, 4)))
        return out

    @staticmethod
    def _arch(model: str) -> str:
        """The start model's architecture without loading it (a registry model may not be
        downloaded yet: the training process fetches it, not the GUI thread)."""
        spec = weights.REGISTRY.get(model)
        if spec is not None and spec.config is not None:
            return arch_of(spec.config)
        path = weights.fetch(model) if spec is not None else Path(model)  # packaged: no download
        return arch_of(weights.read_checkpoint(path).config)

    def _argv(self, data_overrides: dict, model: str, arch: str, resume: bool) -> list[str]:
        out = self.run_folder
        argv = ["--out", str(out), "--init", model, "--model", arch, "--rec-only", "--steps", str(self.steps.value),
                "--batch", str(self.batch.value), "--device", str(self.device.value),
                f"optim.lr={self.lr.value}", f"data.crop={self.crop.value}", "model.vgg_weights=null",
                "train.epochs=1000000000", f"run.val_every={self.val_every.value}",
                f"run.ckpt_every={self.val_every.value}", "run.log_every=1", "run.progress=false",
                "data.workers=0", "run.val_at_start=true", f"run.export={out / 'model.pt'}"]
        if self.threads.value:
            argv.append(f"train.threads={self.threads.value}")
        for key, value in data_overrides.items():
            argv.append(f"{key}={'null' if value is None else value}")
        return argv + (["--resume"] if resume else [])

    def start(self, *_) -> None:
        """Check the data, write them into the output folder and start a fresh run."""
        self._launch(resume=False)

    def resume(self, *_) -> None:
        """Continue the output folder's run from its last checkpoint (up to Steps)."""
        self._launch(resume=True)

    def _launch(self, resume: bool) -> None:
        if self._job is not None:
            return
        try:
            array_data, job_mod = training_modules()
            model = self.model.value
            if model in (None, BROWSE):
                raise RefSRError("choose the model to start from")
            arch = self._arch(model)  # reads a checkpoint file's header: a bad file stops here
            out = self.run_folder
            has_run = any((out / "checkpoints").glob("*.pt"))
            if resume:
                if not has_run:
                    raise RefSRError(f"{out} holds no checkpoint to resume; press Start")
                data = {"data.train": str(out / "data" / "train")}  # the run's stored data
            else:
                if has_run:
                    raise RefSRError(f"{out} already holds a run: press Resume to continue it, or choose "
                                     "another output folder")
                written = array_data.write_training_data(
                    self._array_images(array_data), out / "data", crop=int(self.crop.value),
                    references=[array_data.ArrayImage(r.name, np.asarray(reference_data(r)), bool(r.rgb))
                                for r in self.references.value],
                    val_fraction=float(self.val_fraction.value))
                data = written.overrides()
                if written.val is None:
                    show_info("no image is tall enough to hold out a validation strip: training without "
                              "validation PSNR")
                self._reset_history()
            argv = self._argv(data, model, arch, resume)
        except RefSRError as err:
            self._set_status(f"error: {err}")
            show_error(str(err))
            return
        self._start_model = model
        self._job = job_mod.TrainingJob(argv).start()
        self.last_outcome = ""
        self._set_running(True)
        self._set_status("starting the training process…")
        self.progress.max, self.progress.value = 0, 0
        self._timer.start()

    def stop(self, *_) -> None:
        """Stop after the current step; the run still validates, checkpoints and exports."""
        if self._job is not None:
            self._job.stop()
            self._set_status("stopping after this step…")

    def _set_running(self, on: bool) -> None:
        self.start_button.enabled = self.resume_button.enabled = not on
        self.stop_button.enabled = on
        self.compare_button.enabled = self.export_button.enabled = not on and self.exported is not None

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _reset_history(self) -> None:
        self.history = {"step": [], "loss": [], "val_step": [], "psnr": [], "psnr_bicubic": []}

    def _poll(self) -> None:
        if self._job is None or self._closed:
            return
        events = self._job.poll()
        for ev in events:
            self._on_event(ev)
        if events:
            self._redraw()
        if not self._job.running:
            self._timer.stop()
            self._job = None
            self._set_running(False)
            if self.progress.max == 0:
                self.progress.max = 1

    def _on_event(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "start":
            self.progress.max, self.progress.value = int(ev["total"]), int(ev["step"])
            self._set_status(f"training from step {ev['step']} of {ev['total']}")
        elif kind == "step":
            self.history["step"].append(ev["step"])
            self.history["loss"].append(ev["loss"])
            self.progress.max, self.progress.value = int(ev["total"]), int(ev["step"])
            if self.stop_button.enabled and not self.status.value.startswith("stopping"):
                self._set_status(f"step {ev['step']} of {ev['total']}: loss {ev['loss']:.4g}")
        elif kind == "val":
            self.history["val_step"].append(ev["step"])
            self.history["psnr"].append(ev["psnr"])
            self.history["psnr_bicubic"].append(ev["psnr_bicubic"])
        elif kind == "done":
            self.exported = Path(ev["export"])
            self.last_outcome = "stopped" if ev.get("stopped") else "done"
            announce_model(self.exported)
            self.compare_on.reset_choices()
            val = ev.get("val") or {}
            extra = (f"; val PSNR {val['psnr']:.2f} dB (bicubic {val['psnr_bicubic']:.2f})" if val else "")
            self._set_status(f"{self.last_outcome} at step {ev['step']}: {self.exported.name}{extra}")
            show_info(f"fine-tuned model saved as {self.exported}; it is now in the upscale widget's model list")
        elif kind in ("error", "crash"):
            self.last_outcome = kind
            if ev.get("traceback"):
                log.error("training failed:\n%s", ev["traceback"])
            self._set_status(f"error: {ev['message']}")
            show_error(f"fine-tuning failed: {ev['message']}")

    def _redraw(self) -> None:
        h = self.history
        self.loss_line.set_data(h["step"], h["loss"])
        self.psnr_line.set_data(h["val_step"], h["psnr"])
        self.bicubic_line.set_data(h["val_step"], h["psnr_bicubic"])
        for ax in (self.loss_ax, self.psnr_ax):
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw_idle()

    # ----------------------------------------------------------------------------- afterwards

    def before_after(self, *_) -> None:
        """Upscale the held-out layer ↓4 with the starting and the fine-tuned model; add both."""
        layer = self.compare_on.value
        if layer is None or self.exported is None or self._compare_worker is not None:
            if layer is None:
                show_error("choose the held-out layer to compare on")
            return
        try:
            point = tuple(self._viewer.dims.point)
            hr = np.asarray(reference_data(layer, point))
            refs = list(self.references.value) or list(self.images.value)
            if not refs:
                raise RefSRError("choose a reference or training layer to take textures from")
            ref = np.asarray(reference_data(refs[0], point))
        except RefSRError as err:
            show_error(str(err))
            return
        self._set_status("before / after: upscaling…")
        worker = create_worker(_compare, self._start_model, str(self.exported), hr, ref, _start_thread=False)
        worker.returned.connect(lambda res: self._show_comparison(layer, res))
        worker.errored.connect(lambda err: (show_error(f"before / after failed: {err}"),
                                            self._set_status(f"error: {err}")))
        worker.finished.connect(lambda: setattr(self, "_compare_worker", None))
        self._compare_worker = worker
        worker.start()

    def _show_comparison(self, layer: Image, res: dict) -> None:
        if self._closed:
            return
        scale = np.asarray(layer.scale[-2:], dtype=float) if not layer.rgb else np.asarray(layer.scale[-2:])
        translate = np.asarray(layer.translate[-2:], dtype=float)
        rgb = bool(layer.rgb)
        common = dict(rgb=rgb, metadata={COMPANION_KEY: "comparison"})
        self._viewer.add_image(res["lr"], name=f"{layer.name} ↓4 (input)", scale=scale * 4,
                               translate=translate - scale / 2 + scale * 2, visible=False, **common)
        p = res["psnr"]
        self._viewer.add_image(res["before"], name=f"{layer.name} before ({p['before']:.2f} dB)", scale=scale,
                               translate=translate, visible=False, **common)
        self._viewer.add_image(res["after"], name=f"{layer.name} after ({p['after']:.2f} dB)", scale=scale,
                               translate=translate, **common)
        self.comparison = p
        text = f"PSNR on {layer.name}: bicubic {p['bicubic']:.2f}, before {p['before']:.2f}, after {p['after']:.2f} dB"
        self._set_status(text)
        show_info(text)

    def export_bioimageio(self, *_) -> None:
        """Package the fine-tuned model for bioimage.io next to it (``<output>/model.bioimageio.zip``)."""
        if self.exported is None or self._export_worker is not None:
            return
        from ..zoo import export_bioimageio

        target = self.exported.with_name(f"{self.exported.stem}.bioimageio.zip")
        channels = 1 if self._train_gray() else 3
        worker = create_worker(export_bioimageio, str(self.exported), target, channels=channels,
                               _start_thread=False)
        worker.returned.connect(lambda path: (self._set_status(f"bioimage.io package: {path}"),
                                              show_info(f"bioimage.io package written: {path}")))
        worker.errored.connect(lambda err: show_error(f"bioimage.io export failed: {err}"))
        worker.finished.connect(lambda: setattr(self, "_export_worker", None))
        self._export_worker = worker
        self._set_status("writing the bioimage.io package…")
        worker.start()

    def _train_gray(self) -> bool:
        layers = list(self.images.value)
        return bool(layers) and not layers[0].rgb

    def _on_destroyed(self, *_) -> None:
        self._closed = True
        self._timer.stop()
        if self._job is not None:
            self._job.kill()

    def close(self) -> None:  # magicgui API; also used when the dock is removed
        self._on_destroyed()
        super().close()
