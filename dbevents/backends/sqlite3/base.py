"""SQLite engine with dbevents capture: ``ENGINE = "dbevents.backends.sqlite3"``."""

from typing import Any

from django.db.backends.sqlite3 import base

from dbevents import sqlite_gate
from dbevents.capture import CaptureMixin


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    """Django's SQLite cursor (a subclass, under its name), known to the gate while it is open:
    a cursor still handing out a SELECT's rows (``QuerySet.iterator()``) holds a read snapshot,
    and a write by the publisher thread meanwhile would make the application's next write fail."""

    def close(self) -> None:
        sqlite_gate.closed(self)
        super().close()


class DatabaseWrapper(CaptureMixin, base.DatabaseWrapper):
    """Django's SQLite ``DatabaseWrapper`` plus capture."""

    def create_cursor(self, name: Any = None) -> Any:
        cursor = self.connection.cursor(factory=SQLiteCursorWrapper)
        sqlite_gate.opened(self, cursor)
        return cursor
