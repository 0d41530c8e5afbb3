"""Check that napari opens a (big) OME-Zarr lazily: a real viewer (run under ``xvfb-run -a``)
opens the store through this plugin's reader, and the script prints the layer's levels, their
array types and the process's RSS before and after opening and after one screenshot of the
whole image (the coarsest level is what napari draws then). The store is never loaded: RSS grows
by far less than the full-resolution level's size
(the modules the reader needs are imported before the first RSS reading).

    xvfb-run -a python bench/napari_lazy.py OUT.ome.zarr
"""

from __future__ import annotations

import sys

import psutil


def main(path: str) -> None:
    import napari

    proc = psutil.Process()
    rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731
    import dask.array  # noqa: F401 - imported before "before": the RSS steps are data, not modules
    import zarr  # noqa: F401

    from napari_refsr import large  # noqa: F401
    from napari_refsr._napari import _reader  # noqa: F401

    viewer = napari.Viewer(show=True)
    before = rss()
    layers = viewer.open(path, plugin="napari-refsr")
    opened = rss()
    layer = layers[0]
    viewer.reset_view()
    viewer.screenshot(canvas_only=False)
    shown = rss()
    level0 = layer.data[0]
    full_mib = level0.nbytes / 2**20
    print(f"| layer {layer.name!r} | multiscale={layer.multiscale} | levels={len(layer.data)} | "
          f"level 0 {tuple(level0.shape)} {level0.dtype} as {type(level0).__module__}.{type(level0).__name__} "
          f"({full_mib:.0f} MiB) | RSS {before:.0f} → {opened:.0f} MiB after open → {shown:.0f} MiB after "
          f"a screenshot | scale {tuple(float(s) for s in layer.scale)} |")
    lazy = layer.multiscale and type(level0).__module__.startswith("dask") and shown - before < full_mib / 4
    print("lazy:", lazy)
    viewer.close()
    sys.exit(0 if lazy else 1)


if __name__ == "__main__":
    main(sys.argv[1])
