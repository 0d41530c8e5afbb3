"""Which paths name the same file, so that no output ever overwrites an input or another output.

Two spellings are one file when they resolve to the same existing file (inode: symlinks, hard
links, ``dir/../dir/x``) or, for files not yet written, to the same absolute path after symlinks.
"""

from __future__ import annotations

import os
from typing import Iterable

from .errors import RefSRError

__all__ = ["same_file", "check_no_clash"]


def _identity(path: str | os.PathLike) -> tuple:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))
    return ("inode", st.st_dev, st.st_ino)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (existing or to be written)."""
    return _identity(a) == _identity(b)


def check_no_clash(inputs: Iterable[tuple[str, str | os.PathLike]],
                   outputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Raise :class:`RefSRError` when an output is an input or two outputs are one file.

    ``inputs`` and ``outputs`` are (label, path) pairs; the message names both sides. Run it before
    any work, so a clash costs nothing and destroys nothing.
    """
    inputs, outputs = list(inputs), list(outputs)
    seen: dict[tuple, tuple[str, str]] = {}
    for label, path in inputs:
        seen.setdefault(_identity(path), (label, str(path)))
    for label, path in outputs:
        key = _identity(path)
        if key in seen:
            other, other_path = seen[key]
            raise RefSRError(f"{label} {path} is the same file as {other} {other_path}; writing it would "
                             f"destroy that file, so nothing was done (choose another output name)")
        seen[key] = (label, str(path))
