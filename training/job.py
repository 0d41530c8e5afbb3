"""A training run in a child process, driven from a GUI: start, events, stop, resume.

Why a child process and not a thread: a crash in training — a segfault in a native kernel, the
out-of-memory killer, a CUDA error that poisons the context — ends only the child, and napari
stays up and reports it; the child's CPU threads (``torch.set_num_threads``) and the GIL of its
Python loop do not compete with the viewer's event loop; and the run is exactly
``training/train.py`` (:func:`training.train.main` with the same arguments), so the command
line can resume or inspect it later. The cost is a few seconds of start-up (spawn imports torch).

Events arrive as dicts through a queue (see :class:`training.trainer.Trainer`'s ``events``):
``start``, ``step``, ``val``, ``done``, ``error``, plus ``exit`` with the child's exit code, and
``crash`` when the child died without saying why. :meth:`TrainingJob.stop` sets a flag the
trainer checks after every step; it then validates, writes its checkpoint and exports.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
from typing import Sequence

__all__ = ["TrainingJob"]


def _child(argv: list[str], events, stop) -> None:
    """The child's body: ``training.train.main`` with events and the stop flag."""
    import traceback

    code = 1
    try:
        from training.train import main

        code = main(argv, events=events.put, should_stop=stop.is_set)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then the child ends
        events.put({"kind": "error", "message": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-4000:]})
    finally:
        events.put({"kind": "exit", "code": code})


class TrainingJob:
    """One ``training/train.py`` run (``argv``) in a spawned child process."""

    def __init__(self, argv: Sequence[str]):
        self.argv = [str(a) for a in argv]
        ctx = mp.get_context("spawn")  # never fork a process that runs Qt
        self._events = ctx.Queue()
        self._stop = ctx.Event()
        self._process = ctx.Process(target=_child, args=(self.argv, self._events, self._stop), daemon=True,
                                    name="refsr-training")
        self._exited = False
        self.exit_code: int | None = None

    def start(self) -> "TrainingJob":
        self._process.start()
        return self

    @property
    def running(self) -> bool:
        """True until the child has ended and every event has been read."""
        return not self._exited

    def stop(self) -> None:
        """Ask the run to stop after the current step (it still validates, saves and exports)."""
        self._stop.set()

    def kill(self) -> None:
        """End the child now (closing the viewer): no export."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def poll(self) -> list[dict]:
        """Events that arrived since the last call (never blocks)."""
        out: list[dict] = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue_mod.Empty:
                break
            except (EOFError, OSError):
                break
            out.append(event)
            if event.get("kind") == "exit":
                self.exit_code = int(event.get("code", 1))
        if any(e.get("kind") == "exit" for e in out):
            self._process.join(5)
            self._exited = True
        elif not self._process.is_alive() and self._process.exitcode is not None and not self._exited:
            try:  # the last events may still be in the pipe
                out.extend(self._drain())
            finally:
                if not any(e.get("kind") == "exit" for e in out):
                    self.exit_code = self._process.exitcode
                    out.append({"kind": "crash", "code": self._process.exitcode,
                                "message": f"the training process ended unexpectedly (exit code "
                                           f"{self._process.exitcode})"})
                self._exited = True
        return out

    def _drain(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._events.get(timeout=0.2))
            except (queue_mod.Empty, EOFError, OSError):
                return out
