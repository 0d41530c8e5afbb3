"""A loaded RefSR model: the network, its architecture config, where it came from, its device.

``load_model`` accepts a registry name (downloaded and hash-checked by :mod:`.weights`) or a
checkpoint path in any supported format, builds the matching architecture and loads the weights
strictly. Loaded models are cached, so front ends that run many times load once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import weights
from .archs.srntt import SRNTT, SRNTTConfig
from .archs.guard import expected_shapes
from .archs.ttsr import TTSR, TTSRConfig
from .devices import choose_device
from .errors import RefSRError, WeightsError

__all__ = ["RefSRModel", "load_model", "build_network", "ARCHITECTURES", "DEFAULT_MODEL"]

DEFAULT_MODEL = "refsr-compact"  # shipped in the package: works offline (docs/model-card.md)

# arch name → (config class, network class); every network offers encode_references/forward_bank
ARCHITECTURES: dict[str, tuple[type, type[torch.nn.Module]]] = {
    "ttsr": (TTSRConfig, TTSR), "srntt": (SRNTTConfig, SRNTT)}


def build_network(config: dict) -> torch.nn.Module:
    """An untrained network of the architecture described by ``config`` (``config["arch"]``)."""
    arch = config.get("arch", "ttsr")
    if arch not in ARCHITECTURES:
        raise RefSRError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    config_cls, net_cls = ARCHITECTURES[arch]
    expected_shapes(config_cls, net_cls, config)  # bounds and size, before anything is allocated
    names = set(config_cls.__dataclass_fields__)
    try:
        cfg = config_cls(**{k: v for k, v in config.items() if k in names})
    except (TypeError, ValueError) as err:
        raise RefSRError(f"invalid {arch} architecture config {config}: {err}") from err
    return net_cls(cfg)


def check_tensors(config: dict, state_dict: dict, what: str) -> None:
    """The file's tensors against the architecture's keys and shapes (from a meta build): a
    one-line WeightsError before the real network is built."""
    config_cls, net_cls = ARCHITECTURES[config.get("arch", "ttsr")]
    expected = expected_shapes(config_cls, net_cls, config)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {expected[k]}" for k in expected
             if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"missing {len(missing)} keys ({', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})"] if unexpected else []
        parts += [f"{len(wrong)} wrong shapes ({', '.join(wrong[:2])})"] if wrong else []
        raise WeightsError(f"checkpoint {what} does not fit the {net_cls.__name__} architecture {config}: "
                           + "; ".join(parts))


@dataclass
class RefSRModel:
    """A network ready for inference, with the facts front ends show and cache on."""

    network: torch.nn.Module
    config: dict
    name: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    half: bool = False
    meta: dict = field(default_factory=dict)
    scale: int = 4

    @property
    def arch(self) -> str:
        return self.config.get("arch", "ttsr")

    def to(self, device: str | torch.device = "auto", half: bool | None = None) -> "RefSRModel":
        """Move the network (in place) to ``device``; fp16 only where it helps (CUDA)."""
        dev = choose_device(device)
        use_half = self.half if half is None else bool(half)
        use_half = use_half and dev.type == "cuda"
        self.network.to(device=dev, dtype=torch.float16 if use_half else torch.float32)
        self.device, self.half = dev, use_half
        return self

    def __repr__(self) -> str:
        return f"RefSRModel({self.name!r}, arch={self.arch}, device={self.device}, half={self.half})"


_CACHE: dict[tuple, RefSRModel] = {}
_CACHE_LOCK = threading.Lock()


def _resolve(source: str | Path | None, cache_dir, progress) -> tuple[Path, str]:
    if source is None or source == "":
        source = DEFAULT_MODEL
    path = Path(str(source)).expanduser()
    if path.is_file():
        return path, path.name
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a checkpoint file; give the .pt, .pth or .safetensors "
                           f"file inside it")
    if str(source) in weights.REGISTRY and str(source) not in weights.model_names():
        raise WeightsError(f"{source!r} names {weights.REGISTRY[str(source)].description}, not a "
                           f"super-resolution model; models: {', '.join(weights.model_names())}")
    if str(source) in weights.REGISTRY:
        return weights.fetch(str(source), cache_dir=cache_dir, progress=progress), str(source)
    if path.suffix or path.parent != Path("."):
        raise WeightsError(f"checkpoint file not found: {path}")
    known = ", ".join(sorted(weights.REGISTRY))
    raise WeightsError(f"{source!r} is neither a checkpoint file nor a known model name ({known})")


def _check_finite(state_dict: dict, path: Path) -> None:
    """Refuse weights holding NaN/inf: they would give an all-black (or all-NaN) image, exit 0."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise WeightsError(f"checkpoint {path} has NaN or infinite values in {shown}; the file is damaged "
                           "or comes from a diverged training run")


def load_model(
    source: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    half: bool = False,
    cache_dir: str | Path | None = None,
    progress=True,
    cache: bool = True,
) -> RefSRModel:
    """Load a registry model by name, or a checkpoint file, onto ``device`` (strict key match).

    ``progress`` goes to :func:`weights.fetch` for a download: a bool (tqdm bar) or a
    ``callback(bytes_done, bytes_total)``."""
    path, name = _resolve(source, cache_dir, progress)
    dev = choose_device(device)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(dev), bool(half))
    with _CACHE_LOCK:
        if cache and key in _CACHE:
            return _CACHE[key].to(dev, half)
    ckpt = weights.read_checkpoint(path)
    _check_finite(ckpt.state_dict, path)
    if ckpt.config.get("arch", "ttsr") in ARCHITECTURES:
        check_tensors(ckpt.config, ckpt.state_dict, str(path))
    network = build_network(ckpt.config)
    try:
        network.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])
        raise WeightsError(f"checkpoint {path} does not fit the {ckpt.config.get('arch', 'ttsr')} "
                           f"architecture {ckpt.config}: {detail[:300]}") from err
    network.eval().requires_grad_(False)
    model = RefSRModel(network, dict(ckpt.config), name, meta=dict(ckpt.meta or {})).to(dev, half)
    if cache:
        with _CACHE_LOCK:
            _CACHE[key] = model
    return model
