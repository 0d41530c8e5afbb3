"""Where weights files live: the cache folder, downloads (pooch, verified before they are kept),
packaged files, local checkpoint folders, and :func:`resolve` for "a name or a path → a file"."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlsplit

import pooch

from ..errors import WeightsError
from ..files import remove_file
from ..tempfiles import make_temp, target_mode
from . import pins
from .hashes import check_hash, describe_hash, hash_alg
from .pins import with_pin
from .registry import REGISTRY, WeightSpec, get_spec

__all__ = ["CACHE_ENV", "MODELS_ENV", "BASE_URL_ENV", "CHECKPOINT_SUFFIXES", "cache_dir", "weights_path",
           "download_url", "fetch", "list_weights", "hash_note", "find_checkpoints", "resolve"]

CACHE_ENV = "NAPARI_REFSR_CACHE"
MODELS_ENV = "NAPARI_REFSR_MODELS"  # folders of local/exported checkpoints (os.pathsep-separated)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
BASE_URL_ENV = "NAPARI_REFSR_BASE_URL"

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # root of ``WeightSpec.packaged`` paths


def cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder for downloaded weights: the argument, else ``$NAPARI_REFSR_CACHE``, else the OS cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(pooch.os_cache("napari-refsr"))


_folder = cache_dir  # for functions whose ``cache_dir`` argument hides the function


def weights_path(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the file of ``name`` lives (packaged) or goes (cache), whether or not it exists."""
    spec = get_spec(name)
    if spec.packaged is not None:
        packaged = _PACKAGE_DIR / spec.packaged
        if packaged.exists() or spec.url is None:
            return packaged
    return _folder(cache_dir) / spec.filename


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
            actual = check_hash(packaged, spec.hash)
            if actual is not None:
                raise WeightsError(
                    f"packaged weights {packaged} for {name!r} have {hash_alg(spec.hash)} {actual}, "
                    f"expected {describe_hash(spec.hash)}; the installation is damaged, reinstall "
                    f"napari-refsr")
            return packaged
    spec = with_pin(spec, _folder(cache_dir))  # a user's full sha256 replaces a published prefix
    url = download_url(spec, base_url)
    if url is None:
        raise WeightsError(f"packaged weights for {name!r} are missing ({_PACKAGE_DIR / spec.packaged}) "
                           f"and there is no URL to download them from; reinstall napari-refsr")
    folder = _folder(cache_dir)
    dest = folder / spec.filename
    note = ""
    if dest.exists():
        actual = check_hash(dest, spec.hash)
        if actual is None:
            return dest
        remove_file(dest)
        note = (f" (the cached {dest} had {hash_alg(spec.hash)} {actual}, expected "
                f"{describe_hash(spec.hash)}, and was removed)")
    try:
        _download(spec, url, dest, progress)
    except WeightsError as err:
        raise WeightsError(f"{err}{note}") from err
    return dest


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


def hash_note(name: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """How the file of ``name`` is verified, in words (``refsr weights list``)."""
    return pins.hash_note(get_spec(name), _folder(cache_dir))


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
        tmp_name = make_temp(dest, ".part")  # named so that a killed download's leftover is removed later
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
        actual = check_hash(tmp, spec.hash)
        if actual is not None:
            raise WeightsError(
                f"the file downloaded for {spec.name!r} from {url} has {hash_alg(spec.hash)} {actual}, "
                f"expected {describe_hash(spec.hash)}; the file was removed (corrupt download or "
                f"changed upstream file)")
        os.replace(tmp, dest)
    finally:
        remove_file(tmp)


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


def resolve(
    source: str | os.PathLike,
    *,
    search_dirs: Sequence[str | os.PathLike] = (),
    cache_dir: str | os.PathLike | None = None,
    progress: bool | Callable[[int, int], None] = True,
    what: str = "checkpoint file",
) -> Path:
    """The weights file ``source`` names: an existing path, a file name inside one of
    ``search_dirs``, or a registry name (:func:`fetch`: downloaded once, hash-checked).

    Anything else raises :class:`WeightsError` starting with ``what`` (e.g. ``"model.init"``).
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    inside = os.path.relpath(os.path.join(os.sep, text), os.sep)  # a name in a folder never escapes it
    for folder in search_dirs:
        candidate = Path(folder).expanduser() / inside
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise WeightsError(f"{what} {path} is a folder, not a file; give the .pt, .pth or .safetensors file "
                           f"inside it")
    if text in REGISTRY:
        return fetch(text, cache_dir=cache_dir, progress=progress)
    if path.suffix or path.parent != Path("."):
        raise WeightsError(f"{what} not found: {path}")
    known = ", ".join(sorted(REGISTRY))
    raise WeightsError(f"{what} {text!r} is neither a checkpoint file nor a registry name ({known})")
