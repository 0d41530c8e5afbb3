"""The RefSR dock widget: pick layers and options, run the core in a worker thread, add the result.

A thin shell: layers become arrays and axis choices (:mod:`._convert`), the work is
``load_model`` + ``upscale_nd`` in a napari ``thread_worker`` (model loading — maybe a download —
included), and the result becomes layers again. Progress reaches the GUI through a Qt signal
(queued into the main thread); the Cancel button sets an event that the core checks between
tiles. Errors are shown with the core's message and no layer is created.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, ProgressBar, PushButton, Select, SpinBox
from napari.layers import Image, Layer
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal, Slot
from qtpy.QtWidgets import QComboBox, QFileDialog, QSizePolicy

from .. import DEFAULT_MODEL, DEFAULT_TILE, MIN_TILE, UpscaleResult, load_model, upscale_nd, weights
from ..errors import Cancelled, RefSRError
from . import _axes
from ._convert import COMPANION_KEY, SAMPLE_ROLE_KEY, LayerAxes, layer_axes, layer_data, reference_data, result_layers
from ._large import check_store, full_resolution, is_out_of_core, store_layers, store_path, upscale_to_store

__all__ = ["RefSRWidget", "BROWSE", "announce_model", "image_layers", "model_choices"]

log = logging.getLogger(__name__)

BROWSE = "<browse>"
DEVICES = ("auto", "cuda", "mps", "cpu")
SEARCH_CHOICES = [("exact", "exact"), ("coarse (approximate, faster)", "coarse")]  # labels of SEARCH_MODES
NO_CHANNEL = -1

_LIVE: "weakref.WeakSet[RefSRWidget]" = weakref.WeakSet()  # open upscale widgets
_ANNOUNCED: list[str] = []  # checkpoints made in this session (fine-tune exports), newest first


def announce_model(path: str | os.PathLike) -> None:
    """A new checkpoint (a fine-tune's export) joins every upscale widget's model list now — and
    selected there — and the list of widgets opened later."""
    text = str(Path(path).expanduser())
    if text in _ANNOUNCED:
        _ANNOUNCED.remove(text)
    _ANNOUNCED.insert(0, text)
    for widget in list(_LIVE):
        if not widget._closed:
            widget.select_checkpoint(text)


@dataclass
class _Job:
    """Everything the worker needs, gathered in the main thread (no Qt objects inside)."""

    model: str
    device: str
    half: bool
    tile: int
    data: Any  # the LR layer's data (maybe lazy: read in the worker)
    refs: list[Any]
    axes: LayerAxes
    store: Path | None = None  # out of core: the OME-Zarr the result goes to
    labels: tuple | None = None  # the layer's axis labels (OME-Zarr axis names)
    scale: tuple = ()  # the layer's scale (the store's pixel sizes)
    search: str = "exact"  # or "coarse": the approximate coarse-to-fine search


@dataclass
class _Outcome:
    kind: str  # "ok" | "cancelled" | "error"
    result: UpscaleResult | None = None
    model_name: str = ""
    factor: int = 4
    message: str = ""
    seconds: float = 0.0
    store: Path | None = None


def _execute(job: _Job, report: Callable[[int, int, str], None], cancel: Callable[[], bool]) -> _Outcome:
    """Worker-thread body: load (maybe download) the model, read the data, run the core."""
    start = time.perf_counter()
    try:
        report(0, 0, "loading model…")
        model = load_model(job.model, device=job.device, half=job.half,
                           progress=lambda done, total: report(done, total, f"downloading {job.model}: "
                                                               f"{done / 2**20:.1f} of {total / 2**20:.1f} MB"))
        if cancel():
            raise Cancelled("cancelled")
        if job.store is not None:
            store = upscale_to_store(model, job.data, job.refs, job.axes, job.store, tile=job.tile,
                                     labels=job.labels, scale=job.scale,
                                     progress=lambda d, t: report(d, t, f"chunk {d} of {t}"),
                                     cancel=cancel, search=job.search)
            return _Outcome("ok", None, model.name, int(model.scale), seconds=time.perf_counter() - start,
                            store=store)
        report(0, 0, "reading data…")
        lr = np.asarray(job.data)
        refs = [np.asarray(r) for r in job.refs]
        job_steps = [0, 0]  # the core's progress(done, total) for the bar, its phase(...) for the text

        def phase(name: str, done: int, total: int) -> None:
            report(*job_steps, f"{name}: {done} of {total}")

        result = upscale_nd(model, lr, refs, spatial_axes=job.axes.spatial, channel_axis=job.axes.channel,
                            tile=job.tile, progress=lambda done, total: job_steps.__setitem__(slice(None), (done, total)),
                            phase=phase, cancel=cancel, search=job.search)
    except Cancelled:
        return _Outcome("cancelled", seconds=time.perf_counter() - start)
    except RefSRError as err:
        return _Outcome("error", message=str(err))
    except MemoryError:
        return _Outcome("error", message="not enough memory for this image; use smaller tiles or a smaller image")
    except Exception as err:  # noqa: BLE001 - shown to the user; the traceback goes to the log
        log.exception("RefSR failed")
        return _Outcome("error", message=f"RefSR failed: {type(err).__name__}: {err}")
    return _Outcome("ok", result, model.name, int(model.scale), seconds=time.perf_counter() - start)


def image_layers(viewer) -> list[Image]:
    """Image layers that can be an input or a reference (not our confidence/source maps)."""
    return [layer for layer in viewer.layers if isinstance(layer, Image) and COMPANION_KEY not in layer.metadata]


def model_choices(extra: list[str]) -> list[tuple[str, str]]:
    """(label, value) of every model a widget offers: registry models, the ``extra`` checkpoint
    files, this session's announced ones, those in the models folders, then Browse."""
    items: list[tuple[str, str]] = []
    for name in weights.model_names():
        cached = weights.weights_path(name).is_file()
        items.append((name if cached else f"{name} (downloads on first use)", name))
    seen = set()
    for path in [Path(p) for p in list(extra) + _ANNOUNCED] + weights.find_checkpoints():
        if str(path) not in seen:
            seen.add(str(path))
            items.append((f"{path.name} ({path.parent})", str(path)))
    items.append(("Browse for a checkpoint…", BROWSE))
    return items


class _Relay(QObject):
    """Carries progress from the worker thread into the main thread (queued Qt signal)."""

    progress = Signal(int, int, str)

    def __init__(self, callback: Callable[[int, int, str], None]):
        super().__init__()
        self._callback = callback
        self.progress.connect(self._deliver)

    def report(self, done: int, total: int, message: str) -> None:  # called in the worker thread
        self.progress.emit(done, total, message)

    @Slot(int, int, str)
    def _deliver(self, done: int, total: int, message: str) -> None:  # runs in the main thread
        self._callback(done, total, message)


class RefSRWidget(Container):
    """Reference-based ×4 super-resolution of an image layer, with texture from reference layers."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = viewer
        self._extra_checkpoints: list[str] = []
        self._last_model = DEFAULT_MODEL
        self._axes_layer: Layer | None = None
        self._refreshing_axes = False
        self._last_y: int | None = None
        self._worker = None
        self._cancel = threading.Event()
        #: ``relay.progress(done, total, message)``: a Qt signal emitted in the worker thread
        self.relay = _Relay(self._on_progress)
        self._closed = False
        _LIVE.add(self)

        self.image = ComboBox(label="Low-res image", choices=self._image_choices, nullable=True)
        self.references = Select(label="References", choices=self._reference_choices)
        self.y_axis = ComboBox(label="Y axis", choices=self._y_choices,
                               tooltip=f"the image's vertical axis (at least {_axes.MIN_AXIS} px)")
        self.x_axis = ComboBox(label="X axis", choices=self._x_choices,
                               tooltip=f"the image's horizontal axis (at least {_axes.MIN_AXIS} px)")
        self.channel_axis = ComboBox(label="Channel axis", choices=self._channel_choices)
        self.model = ComboBox(label="Model", choices=self._model_choices, value=DEFAULT_MODEL)
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.precision = ComboBox(label="Precision", choices=("float32", "float16"), value="float32",
                                  tooltip="float16 is used on CUDA GPUs only")
        self.tile = SpinBox(label="Tile (LR px)", min=MIN_TILE, max=4096, step=16, value=DEFAULT_TILE,
                            tooltip="LR pixels per tile; smaller tiles need less memory")
        self.search = ComboBox(label="Search", choices=SEARCH_CHOICES, value="exact",
                               tooltip="exact: the best reference patch everywhere; coarse: approximate "
                                       "coarse-to-fine search, several times faster on big references")
        self.store = LineEdit(label="Result store", value="",
                              tooltip="dask, zarr or multiscale layers run out of core into this OME-Zarr "
                                      "(empty: a new store in the temporary folder)")
        self.add_confidence = CheckBox(text="Add confidence layer", value=False)
        self.add_source = CheckBox(text="Add source-in-reference layers", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = Label(label="Status", value="ready")
        self._keep_narrow()
        buttons = Container(layout="horizontal", labels=False, widgets=[self.run_button, self.cancel_button])
        self.extend([self.image, self.references, self.y_axis, self.x_axis, self.channel_axis, self.model,
                     self.device, self.precision, self.tile, self.search, self.store, self.add_confidence, self.add_source, buttons,
                     self.progress, self.status])

        self.image.changed.connect(self._on_image_changed)
        self.y_axis.changed.connect(self._on_y_changed)
        self.x_axis.changed.connect(self._on_x_changed)
        self.model.changed.connect(self._on_model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        layers = viewer.layers
        layers.events.inserted.connect(self._on_inserted)
        layers.events.removed.connect(self._refresh_layers)
        layers.events.moved.connect(self._refresh_layers)
        for layer in layers:
            layer.events.name.connect(self._refresh_layers)
        self.native.destroyed.connect(self._on_destroyed)  # closing the dock stops the work
        self._refresh_layers()
        self._select_sample_roles(list(layers))

    # ----------------------------------------------------------------------------- choices

    def _images(self) -> list[Image]:
        return image_layers(self._viewer)

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._images()]

    def _reference_choices(self, _widget=None) -> list[tuple[str, Image]]:
        lr = self.image.value if hasattr(self, "image") else None
        return [(layer.name, layer) for layer in self._images() if layer is not lr]

    def _shape_and_labels(self) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
        """The LR layer's full-resolution data shape and axis labels (None: no layer)."""
        layer = self.image.value if hasattr(self, "image") else None
        if layer is None:
            return None
        return tuple(full_resolution(layer).shape), tuple(str(label) for label in layer.axis_labels)

    def _named(self, axes: list[int]) -> list[tuple[str, int]]:
        shape, labels = self._shape_and_labels()
        return [(_axes.axis_name(shape, labels, a), a) for a in axes]

    def _y_choices(self, _widget=None) -> list[tuple[str, int]]:
        """Axes long enough to be Y (a 5-plane Z axis is not offered)."""
        info = self._shape_and_labels()
        return self._named(_axes.spatial_choices(info[0])) if info else []

    def _x_choices(self, _widget=None) -> list[tuple[str, int]]:
        """Like Y, without the axis chosen as Y."""
        y = self.y_axis.value if hasattr(self, "y_axis") else None
        return [c for c in self._y_choices() if c[1] != y]

    def _channel_choices(self, _widget=None) -> list[tuple[str, int]]:
        layer = self.image.value if hasattr(self, "image") else None
        if layer is not None and layer.rgb:
            return [("colour (RGB layer)", NO_CHANNEL)]
        none = [("none: loop over the other axes", NO_CHANNEL)]
        info = self._shape_and_labels()
        if info is None or not hasattr(self, "x_axis"):
            return none
        return none + self._named(_axes.channel_choices(info[0], self.y_axis.value, self.x_axis.value))

    def _keep_narrow(self) -> None:
        """Long texts (an error in the status line, a checkpoint path, a layer name) wrap or elide
        instead of widening the dock for good and squeezing the canvas."""
        label = self.status.native
        label.setWordWrap(True)
        label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        for combo in (self.image, self.y_axis, self.x_axis, self.channel_axis, self.model):
            native = combo.native
            if isinstance(native, QComboBox):
                native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
                native.setMinimumContentsLength(16)
        self.references.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        return model_choices(self._extra_checkpoints)

    # ----------------------------------------------------------------------------- events

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self._refresh_layers)
        self._refresh_layers()
        self._select_sample_roles([event.value])

    def _select_sample_roles(self, layers: list[Layer]) -> None:
        """Layers from the sample data say whether they are the LR image or a reference."""
        role = lambda layer: isinstance(layer, Image) and layer.metadata.get(SAMPLE_ROLE_KEY)  # noqa: E731
        lrs = [layer for layer in layers if role(layer) == "lr"]
        if lrs:
            self.image.value = lrs[-1]
            layers = list(self._viewer.layers)  # a sample's LR brings its references along
        chosen = list(self.references.value)
        refs = [layer for layer in layers
                if role(layer) == "reference" and layer is not self.image.value and layer not in chosen]
        if refs:
            self.references.reset_choices()
            self.references.value = chosen + refs

    def _refresh_layers(self, *_) -> None:
        if self._closed:
            return
        self.image.reset_choices()
        if self.image.value is None and self._images():
            self.image.value = self._images()[0]
        self.references.reset_choices()
        self._refresh_axes()

    def _on_image_changed(self, *_) -> None:
        self.references.reset_choices()
        self._refresh_axes()

    def _refresh_axes(self) -> None:
        """Axis choices follow the LR layer; a new layer gets the defaults (the last two axes that
        are long enough = Y, X; no channel axis)."""
        layer = self.image.value
        self._refreshing_axes = True
        try:
            y, x = self.y_axis.value, self.x_axis.value
            self.y_axis.reset_choices()
            candidates = [a for _, a in self._y_choices()]
            if layer is not self._axes_layer:
                self._axes_layer = layer
                y, x = (candidates[-2], candidates[-1]) if len(candidates) >= 2 else (None, None)
                self.channel_axis.value = NO_CHANNEL
                fixed = layer is None or layer.rgb or layer.ndim == 2
                for w in (self.y_axis, self.x_axis, self.channel_axis):
                    w.enabled = not fixed
            if y in candidates:
                self.y_axis.value = y
            self._follow_y(x)
        finally:
            self._refreshing_axes = False
        self._last_y = self.y_axis.value

    def _follow_y(self, preferred_x: int | None) -> None:
        """X and channel choices after Y changed: X keeps ``preferred_x`` when it is still allowed."""
        self.x_axis.reset_choices()
        allowed = [a for _, a in self._x_choices()]
        if allowed:
            self.x_axis.value = preferred_x if preferred_x in allowed else allowed[-1]
        self._follow_x()

    def _follow_x(self) -> None:
        channel = self.channel_axis.value
        self.channel_axis.reset_choices()
        allowed = [a for _, a in self._channel_choices()]
        self.channel_axis.value = channel if channel in allowed else NO_CHANNEL

    def _on_y_changed(self, *_) -> None:
        if self._refreshing_axes:
            return
        self._refreshing_axes = True
        try:
            # choosing the current X as Y swaps the two
            old_y = self._last_y
            self._follow_y(old_y if self.x_axis.value == self.y_axis.value else self.x_axis.value)
        finally:
            self._refreshing_axes = False
        self._last_y = self.y_axis.value

    def _on_x_changed(self, *_) -> None:
        if not self._refreshing_axes:
            self._follow_x()

    def _on_model_changed(self, value: str) -> None:
        if value != BROWSE:
            self._last_model = value
            return
        path, _ = QFileDialog.getOpenFileName(
            self.native, "Choose a RefSR checkpoint", str(Path.home()),
            "Checkpoints (*.pt *.pth *.safetensors);;All files (*)")
        if path:
            self.select_checkpoint(path)
        else:
            self.model.value = self._last_model

    def select_checkpoint(self, path: str | os.PathLike) -> None:
        """Add a checkpoint file to the model list and select it (what "Browse…" does)."""
        text = str(Path(path).expanduser())
        if text not in self._extra_checkpoints:
            self._extra_checkpoints.insert(0, text)
        self.model.reset_choices()
        self.model.value = text

    # ----------------------------------------------------------------------------- running

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self._worker is not None

    @property
    def worker(self):
        """The current run's napari worker (None when idle), e.g. to wait for it."""
        return self._worker

    def _job(self) -> _Job:
        layer = self.image.value
        if layer is None:
            raise RefSRError("choose the low-res image layer first")
        refs = list(self.references.value)
        if not refs:
            raise RefSRError("choose at least one reference layer (click to select, Ctrl/⌘-click for more)")
        lazy = is_out_of_core(layer)
        data = full_resolution(layer) if lazy else layer_data(layer)
        store = store_path(self.store.value, layer.name) if lazy else None
        if store is not None:
            check_store(store)
        if layer.rgb:
            axes = layer_axes(data.ndim, True)
        else:
            channel = None if self.channel_axis.value in (None, NO_CHANNEL) else self.channel_axis.value
            _axes.check_axes(data.shape, [str(label) for label in layer.axis_labels], self.y_axis.value,
                             self.x_axis.value, channel, layer.name)
            axes = layer_axes(data.ndim, False, self.y_axis.value, self.x_axis.value, channel)
        point = tuple(self._viewer.dims.point)
        model = self.model.value
        if model in (None, BROWSE):
            raise RefSRError("choose a model or a checkpoint file")
        return _Job(model=model, device=self.device.value, half=self.precision.value == "float16",
                    tile=int(self.tile.value), data=data, refs=[reference_data(r, point) for r in refs],
                    axes=axes, store=store, labels=tuple(layer.axis_labels), scale=tuple(layer.scale),
                    search=self.search.value)

    def run(self, *_) -> None:
        """Start a run in a worker thread (ignored while one is running)."""
        if self._worker is not None:
            return
        try:
            job = self._job()
        except RefSRError as err:
            self._set_status(f"error: {err}")
            show_error(str(err))
            return
        if job.model in weights.REGISTRY and not weights.weights_path(job.model).is_file():
            show_info(f"Downloading the '{job.model}' weights (first use only; cached in {weights.cache_dir()})")
        self._context = {"layer": self.image.value, "refs": [r.name for r in self.references.value],
                         "axes": job.axes, "confidence": self.add_confidence.value, "tile": job.tile,
                         "source": self.add_source.value}
        self._cancel.clear()
        worker = create_worker(_execute, job, self.relay.report, self._cancel.is_set, _start_thread=False)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.max, self.progress.value = 1, 0
        self._set_status("starting…")
        worker.start()

    def cancel(self, *_) -> None:
        """Ask the running work to stop after the current tile."""
        if self._worker is None:
            return
        self._cancel.set()
        self._set_status("cancelling…")

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._closed or self._worker is None:
            return
        if total <= 0:
            self.progress.max, self.progress.value = 0, 0  # busy indicator (model loading)
            self._set_status(message)
            return
        self.progress.max, self.progress.value = total, done
        if not self._cancel.is_set():
            self._set_status(message or f"tile {done} of {total}")

    def _on_returned(self, outcome: _Outcome) -> None:
        if self._closed:
            return
        if outcome.kind == "cancelled":
            self._set_status("cancelled")
            show_info("RefSR cancelled; no layer was added")
            return
        if outcome.kind == "error":
            self._set_status(f"error: {outcome.message}")
            show_error(outcome.message)
            return
        ctx = self._context
        layer = ctx["layer"]
        try:
            if outcome.store is not None:
                tuples = [store_layers(layer, ctx["axes"], outcome.store, factor=outcome.factor, tile=ctx["tile"],
                                       model_name=outcome.model_name, reference_names=ctx["refs"],
                                       labels=tuple(layer.axis_labels))]
            else:
                tuples = result_layers(layer, ctx["axes"], outcome.result, factor=outcome.factor,
                                       model_name=outcome.model_name, reference_names=ctx["refs"],
                                       confidence=ctx["confidence"], source=ctx["source"])
            new = [Layer.create(data, kwargs, kind) for data, kwargs, kind in tuples]
        except (RefSRError, ValueError, TypeError) as err:
            self._set_status(f"error: {err}")
            show_error(f"RefSR could not create the result layer: {err}")
            return
        for extra in new[1:]:
            self._viewer.add_layer(extra)
        self._viewer.add_layer(new[0])  # the image on top of its companions
        self._viewer.layers.selection.active = new[0]
        self._fit_view(new[0])
        where = f" (stored in {outcome.store})" if outcome.store is not None else ""
        self._set_status(f"done in {outcome.seconds:.1f} s: {new[0].name}{where}")

    def _fit_view(self, layer: Layer) -> None:
        """Show the whole result (napari keeps the old camera when a layer is added)."""
        try:
            self._viewer.fit_to_view(layers=[layer])
        except (AttributeError, TypeError):  # napari < 0.7: fits all layers
            self._viewer.reset_view()

    def _on_finished(self) -> None:
        self._worker = None
        if self._closed:
            return
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if self.progress.max == 0:
            self.progress.max = 1

    def _on_destroyed(self, *_) -> None:
        self._closed = True
        self._cancel.set()

    def close(self) -> None:  # magicgui API; also used when the dock is removed
        self._closed = True
        self._cancel.set()
        super().close()
