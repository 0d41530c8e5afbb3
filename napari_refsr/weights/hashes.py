"""Hashes in pooch's ``known_hash`` form (``"sha256:<hex>"``), full digests or published prefixes."""

from __future__ import annotations

import re
from pathlib import Path

import pooch

__all__ = ["parse_hash", "digest_len", "hash_alg", "describe_hash", "check_hash"]


def parse_hash(known_hash: str) -> tuple[str, str]:
    alg, _, hexdigest = known_hash.rpartition(":")
    alg = (alg or "sha256").lower()
    hexdigest = hexdigest.lower()
    if alg not in ("md5", "sha1", "sha256", "sha512") or not re.fullmatch(r"[0-9a-f]{8,128}", hexdigest):
        raise ValueError(f"hash must look like 'sha256:<hex digits>', got {known_hash!r}")
    if len(hexdigest) > digest_len(alg):
        raise ValueError(f"hash {known_hash!r} is longer than a {alg} digest")
    return alg, hexdigest


def digest_len(alg: str) -> int:
    return {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}[alg]


def hash_alg(known_hash: str) -> str:
    return parse_hash(known_hash)[0]


def describe_hash(known_hash: str) -> str:
    alg, hexdigest = parse_hash(known_hash)
    return hexdigest if len(hexdigest) == digest_len(alg) else f"{hexdigest}… (published prefix)"


def check_hash(path: Path, known_hash: str) -> str | None:
    """None when ``path`` matches ``known_hash`` (full digest or prefix), else its actual digest."""
    alg, expected = parse_hash(known_hash)
    actual = pooch.file_hash(str(path), alg=alg).lower()
    ok = actual == expected if len(expected) == digest_len(alg) else actual.startswith(expected)
    return None if ok else actual
