"""pytest fixtures for projects that use dbevents. Enable with, in ``conftest.py``::

    pytest_plugins = ["dbevents.pytest_plugin"]
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbevents.testing import CapturedEvents, capture_events


@pytest.fixture
def dbevents_events() -> Iterator[CapturedEvents]:
    """The events the test would publish (not sent to the broker), as a list.

    Events are added when their transaction commits. Under pytest-django's ``db`` fixture the
    test's transaction never commits: call ``dbevents_events.collect()`` before asserting.
    """
    with capture_events() as events:
        yield events
