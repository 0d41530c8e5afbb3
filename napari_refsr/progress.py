"""Progress and cancel of a run: the one place that knows the phases and their steps.

Front ends pass up to three plain callables to :func:`napari_refsr.upscale_nd`:

* ``progress(done, total)`` — the whole job in steps (reference encoding, every search step,
  every tile, over all slices of a stack); ``total`` is known before the first step and ``done``
  only grows — except after an out-of-memory retry, which re-plans the rest (smaller tiles, a
  smaller search budget) and takes the abandoned attempt's steps out of ``done``. The same
  contract as before the phases existed.
* ``cancel() -> bool`` — polled before every step (search steps take well under a second at the
  default sizes, and inside the network's forward pass), so a cancel acts within about a second;
  the run then raises :class:`~napari_refsr.Cancelled`.
* ``phase(name, done, total)`` (optional) — the same steps per phase, for a labelled display:
  called with ``done = 0`` when a phase starts and after each of its steps. ``name`` is one of
  :data:`PHASES`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from .errors import Cancelled

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]
Phase = Callable[[str, int, int], None]

ENCODING = "encoding references"
SEARCHING = "searching"
TILES = "running tiles"
PHASES = (ENCODING, SEARCHING, TILES)

__all__ = ["Tracker", "Progress", "Cancel", "Phase", "PHASES", "ENCODING", "SEARCHING", "TILES"]


class Tracker:
    """Counts a job's steps and forwards them to the front end's callbacks."""

    def __init__(self, progress: Progress | None = None, cancel: Cancel | None = None,
                 phase: Phase | None = None):
        self._progress, self._cancel, self._phase = progress, cancel, phase
        self.done = 0
        self.total = 0
        self.name = ""
        self.phase_done = self.phase_total = 0

    def add(self, steps: int) -> None:
        """Add planned steps to the job's total (before they run)."""
        self.total += int(steps)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the front end asked to stop."""
        if self._cancel is not None and self._cancel():
            raise Cancelled("cancelled")

    def start(self, name: str, steps: int) -> None:
        """A phase of ``steps`` steps begins (counted in the total beforehand with :meth:`add`)."""
        self.name, self.phase_done, self.phase_total = name, 0, int(steps)
        if self._phase is not None:
            self._phase(name, 0, self.phase_total)
        self.check()

    def step(self, n: int = 1) -> None:
        """``n`` steps of the current phase are done."""
        self.done += n
        self.phase_done += n
        if self._progress is not None:
            self._progress(self.done, self.total)
        if self._phase is not None:
            self._phase(self.name, self.phase_done, self.phase_total)
        self.check()

    def rewind(self, done: int, remaining: int) -> None:
        """The work after step ``done`` is (re)planned as ``remaining`` steps: an out-of-memory
        retry redoes a slice with a smaller tile or search budget, and its abandoned steps leave
        ``done``."""
        self.done, self.total = int(done), int(done) + int(remaining)

    def search_callbacks(self) -> dict:
        """``progress``/``cancel`` keyword arguments for :func:`napari_refsr.search.search`."""
        last = [0]

        def progress(done: int, _total: int) -> None:
            self.step(done - last[0])
            last[0] = done

        return {"progress": progress, "cancel": self._cancel_requested}

    def _cancel_requested(self) -> bool:
        return self._cancel is not None and bool(self._cancel())

    @contextlib.contextmanager
    def cancel_inside(self, module) -> Iterator[None]:
        """Poll ``cancel`` before every submodule's forward of ``module`` (a torch network), so a
        long forward pass (a big tile of the published network) stops within about a second."""
        if self._cancel is None:
            yield
            return

        def hook(*_):
            self.check()

        handles = [m.register_forward_pre_hook(hook) for m in module.modules()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
