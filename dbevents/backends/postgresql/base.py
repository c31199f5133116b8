"""PostgreSQL engine with dbevents capture: ``ENGINE = "dbevents.backends.postgresql"``."""

from django.db.backends.postgresql import base

from dbevents.capture import CaptureMixin


class DatabaseWrapper(CaptureMixin, base.DatabaseWrapper):
    """Django's PostgreSQL ``DatabaseWrapper`` plus capture."""
