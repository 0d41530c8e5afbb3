"""Exceptions with messages meant for end users (CLI, napari notifications, ComfyUI)."""

from __future__ import annotations


class RefSRError(ValueError):
    """A problem with the user's input, model or weights; the message says what and how to fix it."""


class WeightsError(RefSRError):
    """Weights could not be found, downloaded, verified or read."""


class Cancelled(RuntimeError):
    """Raised when a caller's cancel check asks the work to stop."""
