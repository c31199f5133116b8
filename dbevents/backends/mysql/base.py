"""MySQL/MariaDB engine with dbevents capture: ``ENGINE = "dbevents.backends.mysql"``."""

from django.db.backends.mysql import base

from dbevents.capture import CaptureMixin


class DatabaseWrapper(CaptureMixin, base.DatabaseWrapper):
    """Django's MySQL/MariaDB ``DatabaseWrapper`` plus capture."""
