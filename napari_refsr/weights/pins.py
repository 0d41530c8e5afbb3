"""Full sha256 digests pinned by the user for registry weights whose publisher gives only a prefix.

OpenMMLab and torchvision publish only the first 8 hex digits of a file's sha256 (in its name):
checked alone, that is 32 bits — enough against a broken download, not against a file swapped on
purpose. A pin supplies the full digest, which :func:`napari_refsr.weights.fetch` then enforces:

* ``$NAPARI_REFSR_SHA256``: ``name=<64 hex>[,name=<64 hex>...]`` (CI, shared installs), or
* ``<weights cache>/pins.json``, written by ``refsr weights pin NAME [SHA256]`` (trust on first
  use: without a digest, the full sha256 of the verified downloaded file is recorded).

The environment wins over the file. A pin must agree with the published prefix. :func:`with_pin` is what ``fetch`` checks against;
:func:`hash_note` says it in words for ``refsr weights list``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from ..errors import WeightsError
from ..files import atomic_write
from .hashes import digest_len, parse_hash
from .registry import WeightSpec

__all__ = ["PINS_ENV", "PINS_FILE", "pinned_sha256", "write_pin", "read_pins", "with_pin", "hash_note"]

PINS_ENV = "NAPARI_REFSR_SHA256"
PINS_FILE = "pins.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _checked(name: str, digest: str, where: str) -> str:
    digest = digest.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(digest):
        raise WeightsError(f"the sha256 pinned for {name!r} in {where} is not 64 hex digits: {digest!r}")
    return digest


def _env_pins() -> dict[str, str]:
    text = os.environ.get(PINS_ENV, "").strip()
    pins = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, digest = item.partition("=")
        if not sep or not name.strip():
            raise WeightsError(f"${PINS_ENV} must look like name=<sha256>[,name=<sha256>], got {item!r}")
        pins[name.strip()] = _checked(name.strip(), digest, f"${PINS_ENV}")
    return pins


def read_pins(folder: Path) -> dict[str, str]:
    """The pins recorded in ``folder/pins.json`` (name → 64 hex digits)."""
    path = Path(folder) / PINS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot read the pinned hashes in {path} ({err}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object name → sha256")
    return {str(k): _checked(str(k), str(v), str(path)) for k, v in data.items()}


def pinned_sha256(name: str, published_hex: str, folder: Path) -> tuple[str, str] | None:
    """(full sha256, where it was pinned) for ``name``, or None; it must extend ``published_hex``."""
    env = _env_pins()
    if name in env:
        digest, where = env[name], f"${PINS_ENV}"
    else:
        digest, where = read_pins(folder).get(name), str(Path(folder) / PINS_FILE)
        if digest is None:
            return None
    if not digest.startswith(published_hex.lower()):
        raise WeightsError(f"the sha256 pinned for {name!r} in {where} ({digest}) does not start with the "
                           f"publisher's {published_hex}: one of them is wrong; fix the pin")
    return digest, where


def write_pin(folder: Path, name: str, digest: str) -> Path:
    """Record ``digest`` for ``name`` in ``folder/pins.json`` (atomically; other pins kept)."""
    pins = read_pins(folder)
    pins[name] = _checked(name, digest, "the argument")
    text = json.dumps(dict(sorted(pins.items())), indent=2) + "\n"
    return atomic_write(Path(folder) / PINS_FILE, lambda f: f.write(text.encode()))


def _is_sha256_prefix(spec: WeightSpec) -> bool:
    alg, hexdigest = parse_hash(spec.hash)
    return alg == "sha256" and len(hexdigest) < digest_len(alg)


def with_pin(spec: WeightSpec, folder: Path) -> WeightSpec:
    """``spec`` to check against the pinned full sha256, when its published hash is a prefix."""
    if not _is_sha256_prefix(spec):
        return spec
    pin = pinned_sha256(spec.name, parse_hash(spec.hash)[1], folder)
    return spec if pin is None else dataclasses.replace(spec, hash=f"sha256:{pin[0]}")


def hash_note(spec: WeightSpec, folder: Path) -> str:
    """How the file of ``spec`` is verified, in words."""
    alg, hexdigest = parse_hash(spec.hash)
    if len(hexdigest) == digest_len(alg):
        return f"{alg} {hexdigest[:12]}… (full digest)"
    pin = pinned_sha256(spec.name, hexdigest, folder) if alg == "sha256" else None
    if pin is not None:
        return f"sha256 {pin[0][:12]}… (full digest pinned in {pin[1]})"
    return (f"{alg} prefix {hexdigest} only ({4 * len(hexdigest)} bits, all the publisher gives); "
            f"pin the full digest: refsr weights pin {spec.name}")
