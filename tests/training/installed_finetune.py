"""Run by test_installed_wheel.py in a child Python whose only napari-refsr is an installed
(unzipped) wheel, from a folder outside the checkout: the fine-tune widget trains a tiny model
for two steps on two layers of a real viewer, and the exported model upscales.

    python installed_finetune.py SITE CHECKPOINT OUT
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

site, checkpoint, out = (Path(a) for a in sys.argv[1:4])

import napari_refsr  # noqa: E402

assert Path(napari_refsr.__file__).resolve().is_relative_to(site.resolve()), napari_refsr.__file__
assert importlib.util.find_spec("training") is None, "a top-level 'training' module is importable"

import napari  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402
from skimage import data  # noqa: E402

from napari_refsr._napari._finetune import FineTuneWidget, training_modules  # noqa: E402

array_data, job = training_modules()
from napari_refsr.training.config import load_config  # noqa: E402

shipped = load_config("refsr-compact")  # a shipped config by name, from the installed package
assert job.__name__ == "napari_refsr.training.job" and Path(job.__file__).resolve().is_relative_to(site.resolve())

viewer = napari.Viewer(show=False)
cam = data.camera()
a = viewer.add_image(cam[:96, :128], name="field a")
b = viewer.add_image(cam[200:296, 200:328], name="field b")
widget = FineTuneWidget(viewer)
viewer.window.add_dock_widget(widget)
widget.model.value = widget.add_model(str(checkpoint))
widget.images.value = [a, b]
widget.steps.value, widget.crop.value, widget.batch.value = 2, 32, 2
widget.device.value, widget.threads.value, widget.val_every.value = "cpu", 1, 1000
widget.output.value = str(out)
widget.start()
assert widget.running, widget.status.value
end = time.time() + 300
while widget.running and time.time() < end:
    QApplication.processEvents()
    time.sleep(0.05)
result = {"outcome": widget.last_outcome, "status": str(widget.status.value), "steps": widget.history["step"],
          "exported": str(widget.exported), "config": [shipped["model"]["n_feats"], shipped["data"]["crop"]]}
if widget.exported is not None:
    model = napari_refsr.load_model(widget.exported, device="cpu", cache=False)
    result["upscaled"] = list(napari_refsr.upscale(model, cam[:32, :32], cam[:64, :64], device="cpu").shape)
viewer.close()
print("RESULT " + json.dumps(result))
