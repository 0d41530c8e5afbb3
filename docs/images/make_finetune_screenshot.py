"""Make docs/images/napari-finetune.png: a short fine-tune of the shipped model on the cell sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/images/make_finetune_screenshot.py [STEPS]

Trains on the sample's reference field (its bottom fifth held out for validation), then runs
Before / after on the sample's full-resolution lower field, which training never saw.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parent / "napari-finetune.png"


def wait(condition, timeout: float) -> None:
    end = time.time() + timeout
    while not condition():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.time() > end:
            raise TimeoutError("the fine-tune did not finish in time")


def main(steps: int = 30) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-refsr", "cell")
    _, widget = viewer.window.add_plugin_dock_widget("napari-refsr", "Fine-tune RefSR")
    widget.images.value = [viewer.layers["cell reference"]]
    widget.steps.value = steps
    widget.batch.value = 2
    widget.val_every.value = max(1, steps // 5)
    widget.output.value = tempfile.mkdtemp(prefix="refsr-finetune-")
    start = time.time()
    widget.start()
    wait(lambda: not widget.running, 3600)
    print(f"{steps} steps in {time.time() - start:.0f} s: {widget.status.value}")
    widget.compare_on.value = viewer.layers["cell original (for comparison)"]
    n = len(viewer.layers)
    widget.before_after()
    wait(lambda: len(viewer.layers) == n + 3, 600)
    wait(lambda: widget._compare_worker is None, 60)
    for layer in viewer.layers:  # grid view: the starting model's result next to the fine-tuned one
        layer.visible = " before (" in layer.name or " after (" in layer.name
    viewer.grid.enabled = True
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(OUT), canvas_only=False)
    print(widget.status.value)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
