"""Reading and writing checkpoint files, safely: reading never runs pickled code
(``torch.load(weights_only=True)`` or safetensors), writing is atomic.

Checkpoint formats understood by :func:`read_checkpoint` (state dicts come out with the reference
TTSR names, which are ours: ``MainNet.*``, ``LTE.*``):

* ``reference``: the reference TTSR release, a flat ``MainNet.*`` / ``LTE.*`` state dict;
* ``mmagic``: OpenMMLab (mmediting / mmagic) ``.pth`` files, ``{"state_dict": {"generator.*",
  "extractor.*", ...}, "meta": ...}``, renamed by :func:`napari_refsr.archs.ttsr_convert.convert_mmagic`;
* ``refsr``: our own export written by :func:`save_checkpoint` (``.pt`` or ``.safetensors``),
  which carries its architecture config, so other networks (``"arch": "srntt"``) fit too.

Foreign formats are the ones the architectures' converters declare (:mod:`napari_refsr.archs.registry`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..archs.convert import strip_prefix
from ..archs.registry import check_export, check_state_dict, foreign_formats
from ..errors import RefSRError, WeightsError
from ..files import atomic_write

__all__ = ["Checkpoint", "EXPORT_FORMAT", "EXPORT_VERSION", "read_checkpoint", "load_state_dict_file",
           "save_checkpoint"]

EXPORT_FORMAT = "napari-refsr"
EXPORT_VERSION = 1


# --------------------------------------------------------------------------- reading


@dataclass
class Checkpoint:
    """Weights ready for ``load_state_dict`` (our names) plus the architecture they belong to."""

    state_dict: dict[str, torch.Tensor]
    config: dict  # at least "arch"; for TTSR also "n_feats", "num_res_blocks", ...
    meta: dict = field(default_factory=dict)
    source_format: str = "refsr"  # "reference" | "mmagic" | "refsr"
    path: Path | None = None


def _numpy_safe_globals() -> list:
    """numpy scalars/arrays/dtypes (data only, no code) as found in OpenMMLab ``meta`` dicts."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = []
    for obj, legacy in [(core.scalar, "numpy.core.multiarray.scalar"),
                        (core._reconstruct, "numpy.core.multiarray._reconstruct")]:
        allowed += [obj, (obj, legacy)]
    allowed += [np.dtype, np.ndarray]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes)
                    if n.endswith("DType") and n not in ("ObjectDType", "VoidDType")]
    return allowed


def _allow_numpy():
    """Context allowing numpy data in ``weights_only`` loads (torch >= 2.5; else a no-op)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_numpy_safe_globals()) if safe_globals else contextlib.nullcontext()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """Safely load a ``.pt/.pth`` (``weights_only``) or ``.safetensors`` file, as stored.

    Returns the top-level object's dict (e.g. a plain torchvision state dict such as VGG19's).
    Any problem raises :class:`WeightsError` naming the file.
    """
    obj, _ = _load_file(Path(path))
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: contains a {type(obj).__name__}, not a dict of weights")
    return obj


def _load_file(path: Path) -> tuple[Any, dict | None]:
    """(loaded object, safetensors metadata or None); never unpickles code."""
    if not path.exists():
        raise WeightsError(f"{path}: file not found")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{path}: file is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    if _looks_like_safetensors(head, size) or path.suffix.lower() == ".safetensors":
        return _load_safetensors(path)
    try:
        with warnings.catch_warnings(), _allow_numpy():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise WeightsError(f"{path}: {_explain_torch_error(exc)}") from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: not a valid (or a truncated) safetensors file ({text})") from None
    return tensors, metadata


def _explain_torch_error(exc: BaseException) -> str:
    text = str(exc)
    if "Weights only load failed" in text:
        found = re.findall(r"GLOBAL ([\w.]+)", text) or re.findall(r"got <class '([\w.]+)'>", text)
        if found:
            names = ", ".join(dict.fromkeys(found))
            return (f"contains pickled Python objects ({names}) that are not loaded because "
                    f"unpickling them could run code; save the weights as a plain state dict or "
                    f".safetensors")
        return "is not a PyTorch checkpoint or is corrupt (unreadable pickle data)"
    if isinstance(exc, EOFError):
        return "ends unexpectedly: the file is truncated or not a PyTorch checkpoint"
    if "zip archive" in text or "central directory" in text:
        return "is truncated or corrupt (incomplete PyTorch zip archive)"
    first = text.splitlines()[0][:200] if text else ""
    return f"cannot be read as a PyTorch checkpoint ({type(exc).__name__}{': ' + first if first else ''})"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint file into a :class:`Checkpoint` with our key names.

    The format is detected from the contents (see the module docstring). Files without a config
    (reference, OpenMMLab) are TTSR and their config is inferred from tensor shapes. Every
    problem raises :class:`WeightsError` with the file name and the reason on one line.
    """
    path = Path(path)
    from .. import zoo  # bioimage.io packages: a zip (as .pt files are) holding an rdf.yaml

    if zoo.is_package(path):
        return zoo.read_package(path)
    obj, st_meta = _load_file(path)
    try:
        ckpt = _interpret(obj, st_meta)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None
    ckpt.path = path
    return ckpt


def _interpret(obj: Any, st_meta: dict | None) -> Checkpoint:
    if st_meta and st_meta.get("format") == EXPORT_FORMAT:
        try:
            config = json.loads(st_meta.get("config", "null"))
            meta = json.loads(st_meta.get("meta", "{}"))
        except json.JSONDecodeError as exc:
            raise WeightsError(f"napari-refsr safetensors metadata is not valid JSON ({exc})") from None
        return _from_export(obj, config, meta)
    if not isinstance(obj, dict):
        raise WeightsError(f"contains a {type(obj).__name__}, not a dict of weights")
    if obj.get("format") == EXPORT_FORMAT:
        return _from_export(obj.get("state_dict"), obj.get("config"), obj.get("meta") or {})

    meta: dict = {}
    state = obj
    if isinstance(obj.get("state_dict"), dict):  # OpenMMLab and other training wrappers
        state = obj["state_dict"]
        meta = obj["meta"] if isinstance(obj.get("meta"), dict) else {}
    state = strip_prefix(_tensor_dict(state))
    roots = {k.split(".", 1)[0] for k in state}
    for _, fmt in foreign_formats():
        if roots & fmt.roots:
            sd = fmt.convert(state)
            config = fmt.infer_config(sd)
            check_state_dict(sd, config, fmt.name)
            return Checkpoint(sd, config, meta, fmt.name)
    raise WeightsError(_foreign_message(state))


def _tensor_dict(state: Any) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise WeightsError(f"the state dict is a {type(state).__name__}, not a dict")
    if not state:
        raise WeightsError("contains no weights (empty state dict)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"entry {key!r} is a {type(value).__name__}, not a tensor: "
                               f"not a state dict")
    return dict(state)


def _foreign_message(state: dict) -> str:
    keys = list(state)
    if "features.0.weight" in state and any(k.startswith("classifier.") for k in keys):
        return ("is a VGG/ImageNet classifier state dict, not a super-resolution model "
                "(use weights.load_state_dict_file for VGG19 weights)")
    sample = ", ".join(repr(k) for k in keys[:3])
    names = "/".join(dict.fromkeys(entry.title for entry, _ in foreign_formats()))
    expected = ", ".join(fmt.expected for _, fmt in foreign_formats())
    return (f"is not a {names} checkpoint: keys such as {sample} are not recognised (expected "
            f"{expected} or a napari-refsr export)")


def _from_export(state: Any, config: Any, meta: Any) -> Checkpoint:
    if not isinstance(config, dict) or not isinstance(config.get("arch"), str):
        raise WeightsError("napari-refsr export without a config naming its 'arch'")
    sd = _tensor_dict(state)
    config = check_export(sd, dict(config))
    return Checkpoint(sd, config, dict(meta) if isinstance(meta, dict) else {}, "refsr")


# --------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: dict,
    meta: dict | None = None,
) -> Path:
    """Write our export format atomically (``.pt``/``.pth`` via torch, ``.safetensors`` with the
    config and meta as JSON metadata): a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".pth", ".safetensors"):
        raise RefSRError(f"{path}: use a .pt, .pth or .safetensors file name for checkpoints")
    if not isinstance(config, dict) or not isinstance(config.get("arch"), str):
        raise RefSRError("save_checkpoint needs a config dict with an 'arch' name")
    meta = dict(meta or {})
    try:
        config_json, meta_json = json.dumps(config), json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise RefSRError(f"config and meta must be JSON-serialisable ({exc})") from None
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise RefSRError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    if suffix == ".safetensors":
        from safetensors.torch import save as st_save

        payload = st_save(tensors, metadata={"format": EXPORT_FORMAT, "version": str(EXPORT_VERSION),
                                             "config": config_json, "meta": meta_json})
    else:
        obj = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "config": json.loads(config_json),
               "meta": json.loads(meta_json), "state_dict": tensors}
    try:
        return atomic_write(path, (lambda f: f.write(payload)) if suffix == ".safetensors" else
                            (lambda f: torch.save(obj, f)))
    except OSError as exc:
        raise WeightsError(f"could not write {path} ({exc.strerror or exc})") from exc
