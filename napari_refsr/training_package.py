"""Where the training code comes from: a source checkout's ``training/`` or the installed wheel.

The repository keeps the trainer at its top level (``python training/train.py``); the wheel ships
the same folder inside the package as ``napari_refsr.training`` (``package-dir`` in
pyproject.toml), so ``pip install napari-refsr`` can fine-tune too (the napari widget,
``python -m napari_refsr.training.train``) without putting a module named ``training`` into
site-packages. The training modules import each other relatively, so they run under either name.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from .errors import RefSRError

__all__ = ["training_module"]

INSTALLED = f"{__package__}.training"


def _checkout_root() -> Path | None:
    """The source checkout this napari_refsr sits in (``training/`` next to it), if any."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "training" / "trainer.py").is_file() and (root / "pyproject.toml").is_file() else None


def _package_name() -> str:
    root = _checkout_root()
    if root is not None:  # the checkout's own training/, the one `python training/train.py` runs
        loaded = sys.modules.get("training")
        if loaded is None:
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return "training"
        if Path(getattr(loaded, "__file__", "") or "").resolve().parent == root / "training":
            return "training"
    return INSTALLED


def training_module(name: str = "") -> ModuleType:
    """``training.<name>`` (the package itself for ``""``): the checkout's, else the installed copy."""
    package = _package_name()
    full = f"{package}.{name}" if name else package
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as err:
        if err.name not in (package, INSTALLED, "training"):
            raise  # a missing dependency, not missing training code
    raise RefSRError("this napari-refsr has no training code (neither napari_refsr.training nor a source "
                     "checkout's training/): reinstall napari-refsr") from None
