"""Fixtures of the napari tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def errors():
    """Error notifications shown while the test runs."""
    from napari.utils.notifications import notification_manager

    seen = []

    def keep(event):
        note = event.value if hasattr(event, "value") else event
        if str(getattr(note, "severity", "")).lower().endswith("error"):
            seen.append(str(note.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)
