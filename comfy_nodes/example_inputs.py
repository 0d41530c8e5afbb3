"""The images the example workflows load, copied into ComfyUI's ``input/`` folder when the pack loads,
so a template opened from the browser runs as it is. A file already there is never replaced.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import folder_paths
from napari_refsr.files import atomic_write

__all__ = ["EXAMPLE_INPUTS", "EXAMPLES_DIR", "install_example_inputs"]

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"  # the repository's examples/
EXAMPLE_INPUTS = {  # name in ComfyUI/input -> file in examples/
    "refsr_example_lr.png": "lr.png",
    "refsr_example_ref.png": "ref.png",
    "refsr_example_ref_detail.png": "ref_detail.png",
}

log = logging.getLogger(__name__)


def install_example_inputs() -> list[str]:
    """Copy the missing example images into ComfyUI's input folder; returns the names copied.
    Never fails the pack's loading: a read-only folder or a missing examples/ is only logged."""
    copied = []
    try:
        target = Path(folder_paths.get_input_directory())
        for name, source in EXAMPLE_INPUTS.items():
            src = EXAMPLES_DIR / source
            if not (target / name).exists() and src.is_file():
                with open(src, "rb") as f:
                    atomic_write(target / name, lambda out, f=f: shutil.copyfileobj(f, out))
                copied.append(name)
    except OSError as err:
        log.warning("RefSR: could not copy the example images into ComfyUI's input folder (%s)", err)
    return copied
