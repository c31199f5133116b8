"""SQLite engine with dbevents capture: ``ENGINE = "dbevents.backends.sqlite3"``."""

from django.db.backends.sqlite3 import base

from dbevents.capture import CaptureMixin


class DatabaseWrapper(CaptureMixin, base.DatabaseWrapper):
    """Django's SQLite ``DatabaseWrapper`` plus capture."""
