"""A training run in a child process, driven from a GUI: start, events, stop, resume.

Why a child process and not a thread: a crash in training — a segfault in a native kernel, the
out-of-memory killer, a CUDA error that poisons the context — ends only the child, and napari
stays up and reports it; the child's CPU threads and the GIL of its Python loop do not compete
with the viewer's event loop; and the run is exactly ``training/train.py``
(:func:`training.train.main` with the same arguments), so the command line can resume or inspect
it later. The cost is a few seconds of start-up (the child imports torch).

The child is ``python -m training.job ARGS`` (``napari_refsr.training.job`` where the training
code comes installed with the package; a plain subprocess: multiprocessing's spawn would
re-import the GUI's main script in the child). It writes one JSON event per line to its stdout
(anything else printed goes to stderr): ``start``, ``step``, ``val``, ``done``, ``error`` (see
:class:`training.trainer.Trainer`'s ``events``) and finally ``exit`` with its exit code; the
parent adds ``crash`` when the child died without one. A line ``stop`` on the child's stdin sets
the trainer's stop flag (it then validates, writes its checkpoint and exports); a closed stdin —
the GUI went away — does the same.
"""

from __future__ import annotations

import collections
import json
import os
import queue as queue_mod
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

__all__ = ["TrainingJob"]


def _import_roots() -> list[str]:
    """Folders the child needs on its path: where ``napari_refsr`` comes from, and the source
    checkout that holds a top-level ``training`` (an installed wheel ships it as
    ``napari_refsr.training``, which needs no folder of its own)."""
    import napari_refsr

    roots = [str(Path(napari_refsr.__file__).resolve().parents[1])]
    if __package__ == "training":
        roots.insert(0, str(Path(__file__).resolve().parents[1]))
    return list(dict.fromkeys(roots))


class TrainingJob:
    """One ``training/train.py`` run (``argv``) in a child process."""

    def __init__(self, argv: Sequence[str]):
        self.argv = [str(a) for a in argv]
        self._events: queue_mod.Queue = queue_mod.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._process: subprocess.Popen | None = None
        self._exited = False
        self._saw_exit = False
        self._readers: list[threading.Thread] = []
        self.exit_code: int | None = None

    def start(self) -> "TrainingJob":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(_import_roots() + [p for p in [env.get("PYTHONPATH")] if p])
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._process = subprocess.Popen([sys.executable, "-m", f"{__package__}.job", *self.argv],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env=env, bufsize=1)
        for stream, target in ((self._process.stdout, self._read_events), (self._process.stderr, self._read_log)):
            thread = threading.Thread(target=target, args=(stream,), daemon=True)
            thread.start()
            self._readers.append(thread)
        return self

    def _read_events(self, stream) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self._stderr.append(line.rstrip())
                continue
            self._events.put(event)

    def _read_log(self, stream) -> None:
        for line in stream:
            self._stderr.append(line.rstrip())

    @property
    def running(self) -> bool:
        """True until the child has ended and every event has been read."""
        return not self._exited

    @property
    def log_tail(self) -> str:
        """The child's last lines of stderr (its log, or a crash's message)."""
        return "\n".join(self._stderr)

    def stop(self) -> None:
        """Ask the run to stop after the current step (it still validates, saves and exports)."""
        if self._process is not None and self._process.poll() is None:
            try:
                self._process.stdin.write("stop\n")
                self._process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass

    def kill(self) -> None:
        """End the child now (e.g. when the viewer closes): no export."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    def poll(self) -> list[dict]:
        """Events that arrived since the last call (never blocks)."""
        out = self._take()
        if self._process is None or self._exited:
            return out
        if self._process.poll() is not None:  # ended: let the readers finish, then close the books
            for thread in self._readers:
                thread.join(5)
            out += self._take()
            if not self._saw_exit:
                self.exit_code = self._process.returncode
                last = next((line for line in reversed(self._stderr) if line.strip()), "")
                out.append({"kind": "crash", "code": self.exit_code,
                            "message": f"the training process ended unexpectedly (exit code {self.exit_code})"
                                       + (f": {last[:300]}" if last else "")})
            self._exited = True
        return out

    def _take(self) -> list[dict]:
        out = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue_mod.Empty:
                return out
            if event.get("kind") == "exit":
                self._saw_exit = True
                self.exit_code = int(event.get("code", 1))
            out.append(event)


def _child(argv: list[str]) -> int:
    """The child's body: events on the original stdout, stop requests from stdin."""
    import traceback

    events_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else prints to stdout goes to stderr
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def emit(event: dict) -> None:
        with lock:
            events_out.write(json.dumps(event, default=float) + "\n")

    stop = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                stop.set()
        stop.set()  # the parent went away

    threading.Thread(target=watch_stdin, daemon=True).start()
    code = 1
    try:
        from .train import main

        code = main(argv, events=emit, should_stop=stop.is_set)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        emit({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
    emit({"kind": "exit", "code": int(code)})
    events_out.close()
    return int(code)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
