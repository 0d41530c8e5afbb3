"""Temporary files beside a target: named so that leftovers of a killed process are found and
removed, and given the mode the target would get from a plain ``open(path, "w")``.

A temp file is ``.<target name>.<host>-<pid>.<random><suffix>``. Before a new one is made for a
target, the leftovers for that target whose process on this host is gone (``kill -9``, power
loss) are deleted; leftovers of other hosts (a shared folder) are deleted once a day old.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["make_temp", "remove_stale", "new_file_mode", "target_mode"]

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TAG = re.compile(r"^([0-9a-f]{6})-(\d+)\.")
_OTHER_HOST_AGE_S = 24 * 3600
_UMASK_LOCK = threading.Lock()


def _prefix(target: Path) -> str:
    return f".{target.name}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale(target: str | os.PathLike, suffix: str = ".tmp") -> list[Path]:
    """Delete temp files for ``target`` left by dead processes; returns what was removed."""
    target = Path(target)
    removed = []
    prefix = _prefix(target)
    for name in glob.glob(glob.escape(str(target.parent / prefix)) + "*" + glob.escape(suffix)):
        path = Path(name)
        m = _TAG.match(path.name[len(prefix):])
        if m is None:
            continue  # not one of ours
        host, pid = m.group(1), int(m.group(2))
        try:
            stale = (not _alive(pid)) if host == _HOST else time.time() - path.stat().st_mtime > _OTHER_HOST_AGE_S
            if stale:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def make_temp(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """An empty new temp file beside ``target`` (after removing that target's stale ones)."""
    target = Path(target)
    remove_stale(target, suffix)
    fd, name = tempfile.mkstemp(prefix=f"{_prefix(target)}{_HOST}-{os.getpid()}.", suffix=suffix,
                                dir=target.parent)
    os.close(fd)
    return Path(name)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def target_mode(target: str | os.PathLike) -> int:
    """The mode a rewritten ``target`` should have: its own if it exists, else a new file's."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return new_file_mode()
