"""Make docs/images/napari-widget.png: the upscale widget after a run on the cell sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/images/make_widget_screenshot.py

The sample's layers pick their roles (low-res image, reference); the shipped default model
upscales the low-res field on the CPU; grid view: the low-res input next to its ×4 result.
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parent / "napari-widget.png"


def settle(seconds: float = 1.0) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.05)


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-refsr", "Reference super-resolution")
    viewer.open_sample("napari-refsr", "cell")
    widget.device.value = "cpu"
    start = time.time()
    widget.run()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.05)
    print(f"run: {time.time() - start:.1f} s wall; status: {widget.status.value}")
    result = viewer.layers[-1]
    for layer in viewer.layers:
        layer.visible = layer is result or layer.name == "cell low-res"
    viewer.grid.enabled = True
    viewer.layers.selection.active = result
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
