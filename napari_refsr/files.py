"""Writing files safely: a reader sees the old file or the whole new one, never half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

from .tempfiles import make_temp, target_mode

__all__ = ["atomic_write", "fsync_dir", "remove_file"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(binary_file)`` on a temp file beside ``path``, fsync, then rename it into place:
    readers see the old file or the whole new one, never half a file. Exceptions propagate and
    leave no temp file behind; one left by a killed process is removed by the next write of the
    same file (:mod:`.tempfiles`). A new file gets the umask's mode, a replaced one keeps its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = target_mode(path)
    tmp_name = make_temp(path)
    try:
        with open(tmp_name, "wb") as f:  # a named file: some writers (tifffile) need f.name
            os.chmod(f.fileno(), mode)  # mkstemp's 0600 would pass to the target on rename
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    finally:
        remove_file(Path(tmp_name))
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


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
