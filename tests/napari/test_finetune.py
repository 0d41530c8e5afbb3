"""The fine-tune widget with a real viewer under Xvfb and a real training child process (a tiny
model, three steps, small layers): it finishes, plots, exports into the upscale widget's list,
the export upscales and compares; Stop mid-run and Resume; a killed child is reported, napari
stays up; bad data are refused before anything starts."""

from __future__ import annotations

import importlib.util
import os
import signal
import zipfile

import numpy as np
import pytest

napari = pytest.importorskip("napari")
torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from skimage import data  # noqa: E402

from napari_refsr import zoo  # noqa: E402
from napari_refsr._napari import _finetune  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-refsr"
RUN_TIMEOUT = 600_000  # ms; a child process imports torch and trains three tiny steps


def _finetune_widget(viewer, tmp_path, checkpoint, *, steps=3):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune RefSR")
    assert isinstance(widget, _finetune.FineTuneWidget)
    widget.model.value = widget.add_model(str(checkpoint))
    widget.steps.value = steps
    widget.crop.value = 32
    widget.batch.value = 2
    widget.device.value = "cpu"
    widget.threads.value = 1
    widget.val_every.value = 1000  # validation at the start and at the end only
    widget.output.value = str(tmp_path / "run")
    return widget


def _layers(viewer):
    cam = data.camera()
    a = viewer.add_image(cam[:96, :128], name="field a")
    b = viewer.add_image(cam[200:296, 200:328], name="field b")
    held = viewer.add_image(cam[320:384, 300:364], name="held out")
    return a, b, held


def _wait(qtbot, widget, timeout=RUN_TIMEOUT):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def _start_long_run(viewer, qtbot, tmp_path, checkpoint):
    """A 500-step run on two layers, once its first step is done."""
    a, b, _ = _layers(viewer)
    widget = _finetune_widget(viewer, tmp_path, checkpoint, steps=500)
    widget.images.value = [a, b]
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history["step"]) >= 1, timeout=RUN_TIMEOUT)
    return widget


def test_finetune_runs_plots_and_exports_into_the_upscale_widget(make_napari_viewer, qtbot, tmp_path,
                                                                   tiny_checkpoint, errors):
    viewer = make_napari_viewer()
    a, b, held = _layers(viewer)
    _, upscaler = viewer.window.add_plugin_dock_widget(PLUGIN, "Reference super-resolution")
    widget = _finetune_widget(viewer, tmp_path, tiny_checkpoint)
    widget.images.value = [a, b]
    assert not widget.compare_button.enabled and not widget.export_button.enabled
    widget.start()
    assert widget.running and widget.stop_button.enabled and not widget.start_button.enabled
    _wait(qtbot, widget)
    assert errors == [], widget.status.value
    assert widget.last_outcome == "done", widget.status.value
    assert widget.history["step"] == [1, 2, 3]
    assert len(widget.history["psnr"]) == 2 and len(widget.history["psnr_bicubic"]) == 2  # start, end
    assert list(widget.loss_line.get_xdata()) == [1, 2, 3]
    assert len(widget.psnr_line.get_xdata()) == 2
    assert widget.progress.value == widget.progress.max == 3
    # the run's data: bottom strips held out for validation, never trained on
    assert sorted(p.name for p in (tmp_path / "run" / "data" / "val").iterdir()) == ["000_field_a.tif",
                                                                                      "001_field_b.tif"]
    exported = tmp_path / "run" / "model.pt"
    assert widget.exported == exported and exported.is_file()
    # in the (already open) upscale widget's list, selected, and it runs
    assert str(exported) in upscaler.model.choices and upscaler.model.value == str(exported)
    lr = viewer.add_image(data.camera()[::4, ::4][:40, :40], name="small lr")
    upscaler.image.value = lr
    upscaler.references.value = [a]
    upscaler.device.value = "cpu"
    upscaler.tile.value = 32
    upscaler.run()
    qtbot.waitUntil(lambda: not upscaler.running, timeout=120_000)
    out = viewer.layers[-1]
    assert out.name.startswith("small lr") and out.data.shape == (160, 160), upscaler.status.value
    # one-click before / after on the held-out layer
    assert widget.compare_button.enabled and widget.export_button.enabled
    n = len(viewer.layers)
    widget.compare_on.value = held
    widget.before_after()
    qtbot.waitUntil(lambda: len(viewer.layers) == n + 3, timeout=120_000)
    lr_name, before_name, after_name = [layer.name for layer in viewer.layers][-3:]
    assert lr_name == "held out ↓4 (input)"
    assert before_name.startswith("held out before") and after_name.startswith("held out after")
    assert viewer.layers[-1].data.shape == (64, 64)
    assert set(widget.comparison) == {"bicubic", "before", "after"}
    if importlib.util.find_spec("bioimageio.spec") is not None:  # the bioimageio extra
        widget.export_bioimageio()
        package = tmp_path / "run" / "model.bioimageio.zip"
        qtbot.waitUntil(lambda: widget._export_worker is None and package.is_file(), timeout=300_000)
        assert zoo.is_package(package) and "gray" in zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert errors == []


def test_stop_mid_run_then_resume(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint, errors):
    viewer = make_napari_viewer()
    widget = _start_long_run(viewer, qtbot, tmp_path, tiny_checkpoint)
    widget.stop()
    _wait(qtbot, widget)
    assert widget.last_outcome == "stopped", widget.status.value
    stopped_at = widget.history["step"][-1]
    assert 1 <= stopped_at < 500
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / f"step_{stopped_at:08d}.pt").is_file() or (ckpts / "best.pt").is_file()
    assert (tmp_path / "run" / "model.pt").is_file()
    # Start again is refused (the folder holds a run); Resume continues it to the new step count
    widget.start()
    assert not widget.running and any("Resume" in m for m in errors)
    widget.steps.value = stopped_at + 1
    widget.resume()
    _wait(qtbot, widget)
    assert widget.last_outcome == "done", widget.status.value
    assert widget.history["step"][-1] == stopped_at + 1


def test_killed_training_process_is_reported(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint, errors):
    viewer = make_napari_viewer()
    widget = _start_long_run(viewer, qtbot, tmp_path, tiny_checkpoint)
    os.kill(widget._job._process.pid, signal.SIGKILL)  # as the out-of-memory killer would
    _wait(qtbot, widget, timeout=60_000)
    assert widget.last_outcome == "crash"
    assert any("ended unexpectedly" in m and "-9" in m for m in errors)
    assert widget.start_button.enabled and viewer.layers  # napari is still up and usable


def test_stack_axes_and_a_folder_train_together(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint, errors):
    from napari_refsr.imageio import read_image, write_image
    from training.array_data import MIN_VAL

    viewer = make_napari_viewer()
    cam = data.camera()
    # a (Y, Z, X) stack: Z is only 3 planes, so it is never offered as Y or X
    stack = np.stack([cam[:96, :128], cam[100:196, :128], cam[200:296, :128]], axis=1)
    layer = viewer.add_image(stack, name="yzx stack", axis_labels=("y", "z", "x"))
    plain = viewer.add_image(cam[300:396, 300:428], name="plain")
    folder = tmp_path / "folder"
    folder.mkdir()
    write_image(folder / "f1.png", cam[400:496, :96])
    write_image(folder / "f2.tif", cam[400:496, 200:296])
    (folder / "notes.txt").write_text("not an image")
    widget = _finetune_widget(viewer, tmp_path, tiny_checkpoint, steps=1)

    shown = lambda w: not w.native.isHidden()  # noqa: E731 - the viewer's window is not on screen
    widget.images.value = [plain]  # no stack: no axis choice shown
    assert not shown(widget.y_axis) and not shown(widget.x_axis)
    widget.images.value = [layer]
    assert shown(widget.y_axis) and shown(widget.x_axis)
    assert widget.y_axis.choices == (0, 2) and widget.x_axis.choices == (2,)  # only axes long enough
    assert widget.y_axis.native.itemText(0) == "y (axis 0, 96 px)"
    assert (widget.y_axis.value, widget.x_axis.value) == (0, 2)  # default: the last two valid axes
    widget.y_axis.value = 2  # choosing X as Y swaps them
    assert (widget.y_axis.value, widget.x_axis.value) == (2, 0)
    widget.y_axis.value = 0
    assert (widget.y_axis.value, widget.x_axis.value) == (0, 2)

    widget.folder.value = str(folder)
    widget.start()
    _wait(qtbot, widget)
    assert errors == [] and widget.last_outcome == "done", widget.status.value
    train = tmp_path / "run" / "data" / "train"
    assert sorted(p.name for p in train.iterdir()) == ["000_yzx_stack_0000.tif", "000_yzx_stack_0001.tif",
                                                       "000_yzx_stack_0002.tif", "001_f1.tif", "002_f2.tif"]
    np.testing.assert_array_equal(read_image(train / "000_yzx_stack_0001.tif"), stack[: 96 - MIN_VAL, 1, :])
    np.testing.assert_array_equal(read_image(train / "002_f2.tif"), cam[400:496 - MIN_VAL, 200:296])
    assert (tmp_path / "run" / "model.pt").is_file()


@pytest.mark.parametrize("case", ["too small", "mixed channels", "no layers", "missing folder",
                                  "stacks of different axes"])
def test_bad_training_data_is_refused_before_start(make_napari_viewer, tmp_path, tiny_checkpoint, errors, case):
    viewer = make_napari_viewer()
    widget = _finetune_widget(viewer, tmp_path, tiny_checkpoint)
    widget.crop.value = 64
    cam = data.camera()
    if case == "too small":
        widget.images.value = [viewer.add_image(cam[:100, :48], name="thin")]
        expected = "smaller than the 64-pixel training crop"
    elif case == "mixed channels":
        rgb = np.stack([cam[:160, :160]] * 3, axis=-1)
        widget.images.value = [viewer.add_image(cam[:160, :160], name="gray"), viewer.add_image(rgb, name="colour")]
        expected = "mix grayscale and colour"
    elif case == "missing folder":
        widget.folder.value = str(tmp_path / "nowhere")
        expected = "does not exist"
    elif case == "stacks of different axes":
        a = viewer.add_image(np.zeros((2, 96, 96), np.uint8), name="zyx")
        b = viewer.add_image(np.zeros((2, 2, 96, 96), np.uint8), name="tzyx")
        widget.images.value = [a, b]
        expected = "different numbers of axes"
    else:
        expected = "at least one training image"
    widget.start()
    assert not widget.running
    assert any(expected in m for m in errors), errors
    assert widget.status.value.startswith("error:")
    assert not (tmp_path / "run" / "data" / "train").exists()  # nothing written
