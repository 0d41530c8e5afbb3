"""Model weights: a registry of known checkpoints, a cache, safe reading and key conversion.

Everything here is plain Python + torch (no napari/Qt), so the CLI, ComfyUI and training use it
too. Files are downloaded with pooch into a cache folder and always verified by hash; reading a
checkpoint never runs pickled code (``torch.load(weights_only=True)`` or safetensors).

Checkpoint formats understood by :func:`read_checkpoint` (state dicts come out with the reference
TTSR names, which are ours: ``MainNet.*``, ``LTE.*``):

* ``reference``: the reference TTSR release, a flat ``MainNet.*`` / ``LTE.*`` state dict;
* ``mmagic``: OpenMMLab (mmediting / mmagic) ``.pth`` files, ``{"state_dict": {"generator.*",
  "extractor.*", ...}, "meta": ...}``, renamed by :func:`convert_mmagic`;
* ``refsr``: our own export written by :func:`save_checkpoint` (``.pt`` or ``.safetensors``),
  which carries its architecture config, so other networks (``"arch": "srntt"``) fit too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import pooch
import torch

from .errors import RefSRError, WeightsError
from .pins import pinned_sha256
from .tempfiles import make_temp, target_mode

CACHE_ENV = "NAPARI_REFSR_CACHE"
MODELS_ENV = "NAPARI_REFSR_MODELS"  # folders of local/exported checkpoints (os.pathsep-separated)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
BASE_URL_ENV = "NAPARI_REFSR_BASE_URL"
EXPORT_FORMAT = "napari-refsr"
EXPORT_VERSION = 1
FORMATS = ("reference", "mmagic", "refsr", "vgg19")

_PACKAGE_DIR = Path(__file__).resolve().parent  # root of ``WeightSpec.packaged`` paths

# The published TTSR architecture (reference and OpenMMLab "c64b16" models).
TTSR_PUBLISHED = {"arch": "ttsr", "n_feats": 64, "num_res_blocks": [16, 16, 8, 4],
                  "res_scale": 1.0, "scale": 4}


# --------------------------------------------------------------------------- hashes


def _parse_hash(known_hash: str) -> tuple[str, str]:
    alg, _, hexdigest = known_hash.rpartition(":")
    alg = (alg or "sha256").lower()
    hexdigest = hexdigest.lower()
    if alg not in ("md5", "sha1", "sha256", "sha512") or not re.fullmatch(r"[0-9a-f]{8,128}", hexdigest):
        raise ValueError(f"hash must look like 'sha256:<hex digits>', got {known_hash!r}")
    if len(hexdigest) > _digest_len(alg):
        raise ValueError(f"hash {known_hash!r} is longer than a {alg} digest")
    return alg, hexdigest


def _digest_len(alg: str) -> int:
    return {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}[alg]


def _alg(known_hash: str) -> str:
    return _parse_hash(known_hash)[0]


def _describe_hash(known_hash: str) -> str:
    alg, hexdigest = _parse_hash(known_hash)
    return hexdigest if len(hexdigest) == _digest_len(alg) else f"{hexdigest}… (published prefix)"


def _check_hash(path: Path, known_hash: str) -> str | None:
    """None when ``path`` matches ``known_hash`` (full digest or prefix), else its actual digest."""
    alg, expected = _parse_hash(known_hash)
    actual = pooch.file_hash(str(path), alg=alg).lower()
    ok = actual == expected if len(expected) == _digest_len(alg) else actual.startswith(expected)
    return None if ok else actual



@dataclass(frozen=True)
class WeightSpec:
    """One downloadable (``url``) or shipped (``packaged``) weights file and how to check it.

    ``hash`` is in pooch's ``known_hash`` form (``"sha256:<hex>"``). A hex part shorter than the
    full digest is a *prefix*: OpenMMLab and torchvision publish only the first 8 hex digits of
    the sha256 (in the file name), so that is all that can honestly be checked for their files.
    """

    name: str
    url: str | None
    filename: str
    hash: str
    format: str
    description: str
    licence: str
    config: dict | None = None
    packaged: str | None = None  # path relative to the package, e.g. "data/<file>"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format must be one of {FORMATS}, got {self.format!r}")
        if self.url is None and self.packaged is None:
            raise ValueError(f"{self.name}: needs a url or a packaged path")
        _parse_hash(self.hash)

    @property
    def is_prefix_hash(self) -> bool:
        """True when only a leading part of the digest is known."""
        alg, hexdigest = _parse_hash(self.hash)
        return len(hexdigest) < _digest_len(alg)


REGISTRY: dict[str, WeightSpec] = {
    # The default: ships inside the package (no download), hash-checked on every load like the
    # rest. How it was trained and what it measures: docs/model-card.md.
    "refsr-compact": WeightSpec(
        name="refsr-compact",
        url=None,
        filename="refsr-compact.safetensors",
        hash="sha256:7f370936ef63a2e6f075269353497af9833ee06f378df696cd3ea26e8485d79f",
        format="refsr",
        description="compact TTSR ×4 (32 features, 4+4+2+1 blocks) trained on scikit-image's "
                    "bundled images; ships with the package, works offline (docs/model-card.md)",
        licence="MIT (this project); trained on scikit-image's bundled images (public domain, CC0 "
                "or no known restrictions; see docs/model-card.md)",
        packaged="data/refsr-compact.safetensors",
    ),
    "ttsr-rec": WeightSpec(
        name="ttsr-rec",
        url="https://download.openmmlab.com/mmediting/restorers/ttsr/"
            "ttsr-rec_x4_c64b16_g1_200k_CUFED_20210525-b0dba584.pth",
        filename="ttsr-rec_x4_c64b16_g1_200k_CUFED_20210525-b0dba584.pth",
        hash="sha256:b0dba584",
        format="mmagic",
        description="TTSR ×4 trained on CUFED with the reconstruction loss only (OpenMMLab); "
                    "best PSNR, smoother textures",
        licence="Apache-2.0 (OpenMMLab model zoo); trained on CUFED5",
        config=dict(TTSR_PUBLISHED),
    ),
    "ttsr-gan": WeightSpec(
        name="ttsr-gan",
        url="https://download.openmmlab.com/mmediting/restorers/ttsr/"
            "ttsr-gan_x4_c64b16_g1_500k_CUFED_20210626-2ab28ca0.pth",
        filename="ttsr-gan_x4_c64b16_g1_500k_CUFED_20210626-2ab28ca0.pth",
        hash="sha256:2ab28ca0",
        format="mmagic",
        description="TTSR ×4 trained on CUFED with perceptual + adversarial losses (OpenMMLab); "
                    "sharper textures, lower PSNR",
        licence="Apache-2.0 (OpenMMLab model zoo); trained on CUFED5",
        config=dict(TTSR_PUBLISHED),
    ),
    "vgg19": WeightSpec(
        name="vgg19",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        filename="vgg19-dcbb9e9d.pth",
        hash="sha256:dcbb9e9d",
        format="vgg19",
        description="torchvision VGG19 ImageNet weights (training: LTE init, perceptual loss)",
        licence="CC BY 4.0 (VGG, Simonyan & Zisserman), distributed by torchvision (BSD-3-Clause)",
    ),
}

# --------------------------------------------------------------------------- cache and download


def cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder for downloaded weights: the argument, else ``$NAPARI_REFSR_CACHE``, else the OS cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(pooch.os_cache("napari-refsr"))


def get_spec(name: str) -> WeightSpec:
    """Registry entry by name; an unknown name raises :class:`WeightsError` listing the known ones."""
    spec = REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise WeightsError(f"unknown weights {name!r}; known names: {known}")
    return spec


def weights_path(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the file of ``name`` lives (packaged) or goes (cache), whether or not it exists."""
    spec = get_spec(name)
    if spec.packaged is not None:
        packaged = _PACKAGE_DIR / spec.packaged
        if packaged.exists() or spec.url is None:
            return packaged
    return _cache_dir(cache_dir) / spec.filename


def download_url(spec: WeightSpec, base_url: str | None = None) -> str | None:
    """The URL to fetch ``spec`` from; ``base_url`` (or ``$NAPARI_REFSR_BASE_URL``) replaces
    everything before the file name, for mirrors and local servers."""
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    if base:
        return base.rstrip("/") + "/" + spec.filename
    return spec.url


def fetch(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | Callable[[int, int], None] = True,
    base_url: str | None = None,
) -> Path:
    """Path of the verified weights file ``name``, downloading it into the cache if needed.

    ``progress``: True for a tqdm bar, False for none, or a ``callback(bytes_done, bytes_total)``
    (front ends show it in their own progress bars).

    A cached file is hash-checked on every call; one that fails is removed and downloaded again.
    Downloads go to a temporary file next to the target and are renamed only once verified, so
    a failed or mismatched download never leaves a file behind.
    """
    spec = get_spec(name)
    if spec.packaged is not None:
        packaged = _PACKAGE_DIR / spec.packaged
        if packaged.exists():
            actual = _check_hash(packaged, spec.hash)
            if actual is not None:
                raise WeightsError(
                    f"packaged weights {packaged} for {name!r} have {_alg(spec.hash)} {actual}, "
                    f"expected {_describe_hash(spec.hash)}; the installation is damaged, reinstall "
                    f"napari-refsr")
            return packaged
    spec = _with_pin(spec, _cache_dir(cache_dir))
    url = download_url(spec, base_url)
    if url is None:
        raise WeightsError(f"packaged weights for {name!r} are missing ({_PACKAGE_DIR / spec.packaged}) "
                           f"and there is no URL to download them from; reinstall napari-refsr")
    folder = _cache_dir(cache_dir)
    dest = folder / spec.filename
    note = ""
    if dest.exists():
        actual = _check_hash(dest, spec.hash)
        if actual is None:
            return dest
        _remove(dest)
        note = (f" (the cached {dest} had {_alg(spec.hash)} {actual}, expected "
                f"{_describe_hash(spec.hash)}, and was removed)")
    try:
        _download(spec, url, dest, progress)
    except WeightsError as err:
        raise WeightsError(f"{err}{note}") from err
    return dest


def _with_pin(spec: WeightSpec, folder: Path) -> WeightSpec:
    """``spec`` checked against the user's pinned full sha256 when its published hash is a prefix."""
    if not spec.is_prefix_hash or _alg(spec.hash) != "sha256":
        return spec
    pin = pinned_sha256(spec.name, _parse_hash(spec.hash)[1], folder)
    return spec if pin is None else dataclasses.replace(spec, hash=f"sha256:{pin[0]}")


def hash_note(name: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """How the file of ``name`` is verified, in words (``refsr weights list``)."""
    spec = get_spec(name)
    alg, hexdigest = _parse_hash(spec.hash)
    if not spec.is_prefix_hash:
        return f"{alg} {hexdigest[:12]}… (full digest)"
    pin = pinned_sha256(name, hexdigest, _cache_dir(cache_dir)) if alg == "sha256" else None
    if pin is not None:
        return f"sha256 {pin[0][:12]}… (full digest pinned in {pin[1]})"
    return (f"{alg} prefix {hexdigest} only ({4 * len(hexdigest)} bits, all the publisher gives); "
            f"pin the full digest: refsr weights pin {name}")


def model_names() -> list[str]:
    """Registry names of super-resolution models, in registry order (``vgg19`` and other
    feature-extractor weights used only by training are left out)."""
    return [name for name, spec in REGISTRY.items() if spec.format != "vgg19"]


def list_weights(*, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per registry entry (name, description, cached, packaged, path, format, url,
    licence); ``packaged``: the file ships inside the package (nothing to download)."""
    rows = []
    for name, spec in REGISTRY.items():
        path = weights_path(name, cache_dir=cache_dir)
        packaged = spec.packaged is not None and path == _PACKAGE_DIR / spec.packaged
        rows.append({"name": name, "description": spec.description, "cached": path.is_file(),
                     "packaged": packaged, "path": str(path), "format": spec.format, "url": spec.url,
                     "licence": spec.licence, "hash": hash_note(name, cache_dir=cache_dir)})
    return rows


def _cache_dir(override: str | os.PathLike | None) -> Path:
    return cache_dir(override)


class _CallbackBar:
    """The tqdm-like object pooch's downloaders drive, forwarding (done, total) to a callback."""

    def __init__(self, callback: Callable[[int, int], None]):
        self.callback, self.total, self.n = callback, 0, 0

    def update(self, count: int) -> None:
        self.n += count  # pooch counts whole chunks: the last one can overshoot the size
        total = int(self.total or 0)
        self.callback(min(self.n, total) if total else self.n, total)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass


def _download(spec: WeightSpec, url: str, dest: Path, progress) -> None:
    """Download ``url`` to ``dest`` through a verified temporary file (raises WeightsError)."""
    import requests  # pooch's own dependency; imported lazily like pooch does

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = make_temp(dest, ".part")
        os.chmod(tmp_name, target_mode(dest))
    except OSError as exc:
        raise WeightsError(f"cannot write to the weights cache {dest.parent} ({exc.strerror or exc}); "
                           f"set {CACHE_ENV} to a writable folder") from exc
    tmp = Path(tmp_name)
    if callable(progress):
        progress = _CallbackBar(progress)
    try:
        try:
            if urlsplit(url).scheme in ("http", "https"):
                downloader = pooch.HTTPDownloader(progressbar=progress, timeout=60)
            else:  # ftp, sftp, doi: pooch's own choice (ValueError for unsupported schemes)
                downloader = pooch.downloaders.choose_downloader(url, progressbar=progress)
            downloader(url, str(tmp), None)
        except (requests.exceptions.RequestException, OSError, ValueError) as exc:
            raise WeightsError(
                f"could not download {spec.name!r} from {url} ({_reason(exc)}); download it yourself "
                f"from {url} and save it as {dest}, or set {CACHE_ENV} to a folder that holds "
                f"{spec.filename} (or {BASE_URL_ENV} to a mirror)") from exc
        actual = _check_hash(tmp, spec.hash)
        if actual is not None:
            raise WeightsError(
                f"the file downloaded for {spec.name!r} from {url} has {_alg(spec.hash)} {actual}, "
                f"expected {_describe_hash(spec.hash)}; the file was removed (corrupt download or "
                f"changed upstream file)")
        os.replace(tmp, dest)
    finally:
        _remove(tmp)


def _reason(exc: BaseException) -> str:
    import requests

    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None) is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "no connection to the server"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- reading checkpoints


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
    state = _tensor_dict(state)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    roots = {k.split(".", 1)[0] for k in state}
    if roots & {"MainNet", "LTE"}:
        sd = _from_reference(state)
        fmt = "reference"
    elif roots & {"generator", "extractor"}:
        sd = convert_mmagic(state)
        fmt = "mmagic"
    else:
        raise WeightsError(_foreign_message(state))
    config = infer_ttsr_config(sd)
    _validate_ttsr(sd, config, fmt)
    return Checkpoint(sd, config, meta, fmt)


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
    return (f"is not a TTSR checkpoint: keys such as {sample} are not recognised (expected "
            f"MainNet.*/LTE.* (reference TTSR), generator.*/extractor.* (OpenMMLab) or a "
            f"napari-refsr export)")


def _from_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference TTSR keys: keep MainNet/LTE, drop the frozen LTE copy and the parameter-free search."""
    sd, unknown = {}, []
    for key, value in state.items():
        root = key.split(".", 1)[0]
        if root in ("LTE_copy", "SearchNet") or "_copy." in key:
            continue
        if root in ("MainNet", "LTE"):
            sd[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"reference TTSR checkpoint has unexpected keys: {_some(unknown)}")
    return sd


def _from_export(state: Any, config: Any, meta: Any) -> Checkpoint:
    if not isinstance(config, dict) or not isinstance(config.get("arch"), str):
        raise WeightsError("napari-refsr export without a config naming its 'arch'")
    sd = _tensor_dict(state)
    config = dict(config)
    if config["arch"] == "ttsr":
        from .archs.guard import check_fields
        from .archs.ttsr import TTSRConfig

        check_fields(TTSRConfig, config)  # n_feats 8.0 or 20000: refused before anything is built
        try:
            config = TTSRConfig(**config).to_dict()
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"invalid TTSR config {config} ({exc})") from None
        _validate_ttsr(sd, config, "napari-refsr")
    return Checkpoint(sd, config, dict(meta) if isinstance(meta, dict) else {}, "refsr")


def _some(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# --------------------------------------------------------------------------- TTSR specifics

_BLOCK_RE = re.compile(r"^MainNet\.(SFE\.RBs|RB11|RB21|RB22|RB31|RB32|RB33)\.(\d+)\.")


def infer_ttsr_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """TTSR config (n_feats, num_res_blocks) from a reference-named state dict's shapes."""
    from .archs.ttsr import TTSRConfig

    head = state_dict.get("MainNet.SFE.conv_head.weight")
    if head is None or head.ndim != 4:
        raise WeightsError("TTSR weights lack MainNet.SFE.conv_head.weight (incomplete checkpoint)")
    counts: dict[str, int] = {}
    for key in state_dict:
        m = _BLOCK_RE.match(key)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)) + 1)
    blocks = (counts.get("SFE.RBs", 0), counts.get("RB11", 0), counts.get("RB21", 0), counts.get("RB31", 0))
    try:
        return TTSRConfig(n_feats=int(head.shape[0]), num_res_blocks=blocks).to_dict()
    except ValueError as exc:
        raise WeightsError(f"TTSR weights with an impossible shape ({exc})") from None


def _validate_ttsr(sd: Mapping[str, torch.Tensor], config: dict, fmt: str) -> None:
    """Check keys and shapes against a TTSR of ``config`` for a one-line error naming the problem."""
    from .archs.guard import expected_shapes
    from .archs.ttsr import TTSR, TTSRConfig

    expected = expected_shapes(TTSRConfig, TTSR, config)  # bounds first; shapes from a meta build
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({_some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_some(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} wrong shapes ({_some(wrong, 2)})")
        raise WeightsError(f"{fmt} weights do not fit a TTSR with n_feats={config['n_feats']}, "
                           f"num_res_blocks={tuple(config['num_res_blocks'])}: " + "; ".join(parts))


# OpenMMLab → reference names. Single convolutions (module path without .weight/.bias):
_MM_MODULES = {
    "generator.sfe.conv_first": "MainNet.SFE.conv_head",
    "generator.sfe.conv_last": "MainNet.SFE.conv_tail",
    "generator.conv_first1": "MainNet.conv11_head",
    "generator.conv_last1": "MainNet.conv11_tail",
    "generator.up1.upsample_conv": "MainNet.conv12",
    "generator.conv_first2": "MainNet.conv22_head",
    "generator.csfi2.conv1to2": "MainNet.ex12.conv12",
    "generator.csfi2.conv2to1": "MainNet.ex12.conv21",
    "generator.csfi2.conv_merge1": "MainNet.ex12.conv_merge1",
    "generator.csfi2.conv_merge2": "MainNet.ex12.conv_merge2",
    "generator.conv_last2_1": "MainNet.conv21_tail",
    "generator.conv_last2_2": "MainNet.conv22_tail",
    "generator.up2.upsample_conv": "MainNet.conv23",
    "generator.conv_first3": "MainNet.conv33_head",
    "generator.csfi3.conv1to2": "MainNet.ex123.conv12",
    "generator.csfi3.conv1to4": "MainNet.ex123.conv13",
    "generator.csfi3.conv2to1": "MainNet.ex123.conv21",
    "generator.csfi3.conv2to4": "MainNet.ex123.conv23",
    "generator.csfi3.conv4to1_1": "MainNet.ex123.conv31_1",
    "generator.csfi3.conv4to1_2": "MainNet.ex123.conv31_2",
    "generator.csfi3.conv4to2": "MainNet.ex123.conv32",
    "generator.csfi3.conv_merge1": "MainNet.ex123.conv_merge1",
    "generator.csfi3.conv_merge2": "MainNet.ex123.conv_merge2",
    "generator.csfi3.conv_merge4": "MainNet.ex123.conv_merge3",
    "generator.conv_last3_1": "MainNet.conv31_tail",
    "generator.conv_last3_2": "MainNet.conv32_tail",
    "generator.conv_last3_3": "MainNet.conv33_tail",
    "generator.merge_features.conv1to4": "MainNet.merge_tail.conv13",
    "generator.merge_features.conv2to4": "MainNet.merge_tail.conv23",
    "generator.merge_features.conv_merge": "MainNet.merge_tail.conv_merge",
    "generator.merge_features.conv_last1": "MainNet.merge_tail.conv_tail1",
    "generator.merge_features.conv_last2": "MainNet.merge_tail.conv_tail2",
    "extractor.img_normalize": "LTE.sub_mean",
    "extractor.slice1.0": "LTE.slice1.0",
    "extractor.slice2.2": "LTE.slice2.2",
    "extractor.slice2.5": "LTE.slice2.5",
    "extractor.slice3.7": "LTE.slice3.7",
    "extractor.slice3.10": "LTE.slice3.10",
}
# Residual-block lists (``<list>.<i>.conv1|conv2``):
_MM_BLOCKS = {
    "generator.sfe.body": "MainNet.SFE.RBs",
    "generator.res_block1": "MainNet.RB11",
    "generator.res_block2_1": "MainNet.RB21",
    "generator.res_block2_2": "MainNet.RB22",
    "generator.res_block3_1": "MainNet.RB31",
    "generator.res_block3_2": "MainNet.RB32",
    "generator.res_block3_3": "MainNet.RB33",
}
_MM_BLOCK_RE = re.compile(r"^(.+)\.(\d+)\.(conv[12])$")


def convert_mmagic(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenMMLab TTSR state dict (``generator.*``, ``extractor.*``) → reference key names.

    Everything outside the generator and the extractor (``extractor_copy``, ``discriminator``,
    losses) is dropped; an unrecognised generator/extractor key raises :class:`WeightsError`.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.split(".", 1)[0] not in ("generator", "extractor"):
            continue
        module, _, param = key.rpartition(".")
        target = _MM_MODULES.get(module)
        if target is None:
            m = _MM_BLOCK_RE.match(module)
            if m and m.group(1) in _MM_BLOCKS:
                target = f"{_MM_BLOCKS[m.group(1)]}.{m.group(2)}.{m.group(3)}"
        if target is None or param not in ("weight", "bias"):
            unknown.append(key)
            continue
        new_key = f"{target}.{param}"
        if new_key in out:
            raise WeightsError(f"OpenMMLab checkpoint has {key!r} twice")
        out[new_key] = value
    if unknown:
        raise WeightsError(f"unrecognised OpenMMLab TTSR keys: {_some(unknown)}")
    if not out:
        raise WeightsError("OpenMMLab checkpoint without generator/extractor weights")
    return out


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


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(binary_file)`` on a temp file beside ``path``, fsync, then rename it into place:
    readers see the old file or the whole new one, never half a file. Exceptions propagate and
    leave no temp file behind; one left by a killed process is removed by the next write of the
    same file (:mod:`.tempfiles`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = target_mode(path)  # an existing file keeps its mode; a new one follows the umask
    tmp_name = make_temp(path)
    try:
        with open(tmp_name, "wb") as f:  # a named file: some writers (tifffile) need f.name
            os.chmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    finally:
        _remove(Path(tmp_name))
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make the rename durable where the OS allows it (POSIX); harmless elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def find_checkpoints(folders: list[Path] | None = None) -> list[Path]:
    """Exported checkpoints in the models folders (directly inside, or one folder down such as
    ``runs/<name>/model.pt``). Folders: ``$NAPARI_REFSR_MODELS`` (``os.pathsep``-separated), else
    ``<weights cache>/models`` and ``./runs`` (where training writes its exports)."""
    if folders is None:
        env = os.environ.get(MODELS_ENV)
        if env:
            folders = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
        else:
            folders = [cache_dir() / "models", Path.cwd() / "runs"]
    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for pattern in ("*", "*/*"):
            for path in sorted(folder.glob(pattern)):
                if path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file() and path not in found:
                    found.append(path)
    return found
