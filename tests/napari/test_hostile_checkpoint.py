"""A hostile or foreign checkpoint picked with "Browse…" in a real viewer (issue 14): the upscale
and fine-tune widgets show one error notification naming the file and the problem, run nothing
from the file, add no layer, and keep working with a good checkpoint afterwards."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

napari = pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402
from skimage import data  # noqa: E402

from napari_refsr import weights  # noqa: E402
from napari_refsr._napari import _widget  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-refsr"


class _Payload:
    """Pickled, it asks the unpickler to run a shell command (a classic checkpoint attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(kind: str, folder) -> tuple[object, str]:
    """(file, the words the notification must contain)."""
    if kind == "pickled code":
        path = folder / "evil.pt"
        torch.save({"MainNet.SFE.conv_head.weight": _Payload(folder / "pwned")}, path)
        return path, "system"
    if kind == "5000 blocks":
        path = folder / "deep.safetensors"
        save_file({"MainNet.SFE.conv_head.weight": torch.zeros(1)}, str(path),
                  metadata={"format": weights.EXPORT_FORMAT, "version": "1", "meta": "{}",
                            "config": json.dumps({"arch": "ttsr", "n_feats": 8, "num_res_blocks": [5000, 1, 1, 1]})})
        return path, "num_res_blocks=[5000, 1, 1, 1] is out of bounds"
    if kind == "foreign network":
        path = folder / "resnet.pt"
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(10)}, path)
        return path, "resnet.pt"
    path = folder / "picture.pt"  # not a checkpoint at all
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return path, "picture.pt"


def _browse(monkeypatch, path) -> None:
    """Qt's file dialog answers ``path`` (what the user would pick)."""
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(path), "")))


@pytest.mark.parametrize("kind", ["pickled code", "5000 blocks", "foreign network", "not a checkpoint"])
def test_upscale_widget_reports_a_hostile_checkpoint_and_keeps_working(make_napari_viewer, qtbot, tmp_path,
                                                                       monkeypatch, tiny_checkpoint, errors, kind):
    viewer = make_napari_viewer()
    cam = data.camera()
    lr = viewer.add_image(cam[::4, ::4][:40, :40], name="lr")
    ref = viewer.add_image(cam[:160, :160], name="ref")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Reference super-resolution")
    widget.image.value, widget.references.value = lr, [ref]
    widget.device.value, widget.tile.value = "cpu", 32
    path, words = _hostile(kind, tmp_path)
    _browse(monkeypatch, path)
    widget.model.value = _widget.BROWSE
    assert widget.model.value == str(path)  # picked, not yet read
    n = len(viewer.layers)
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors
    assert widget.status.value.startswith("error:") and len(viewer.layers) == n
    assert not (tmp_path / "pwned").exists()
    # the widget still works: a good checkpoint from the same chooser runs
    _browse(monkeypatch, tiny_checkpoint)
    widget.model.value = _widget.BROWSE
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert len(errors) == 1 and viewer.layers[-1].data.shape == (160, 160), widget.status.value


def test_finetune_widget_refuses_a_hostile_start_model(make_napari_viewer, tmp_path, monkeypatch, errors):
    viewer = make_napari_viewer()
    layer = viewer.add_image(data.camera()[:128, :128], name="field")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune RefSR")
    widget.images.value = [layer]
    widget.output.value = str(tmp_path / "run")
    path, words = _hostile("pickled code", tmp_path)
    _browse(monkeypatch, path)
    widget.model.value = _widget.BROWSE
    assert widget.model.value == str(path)
    widget.start()
    assert not widget.running
    assert len(errors) == 1 and words in errors[0], errors
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "run" / "data").exists()
    assert np.asarray(layer.data).shape == (128, 128)  # the input is untouched
