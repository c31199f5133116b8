"""App config: registers the system checks and keeps ``migrate`` out of capture."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate


def _capture(using: str) -> Any:
    return getattr(connections[using], "dbevents", None)


def _pause(*, using: str, **kwargs: Any) -> None:
    capture = _capture(using)
    if capture is not None:
        capture.paused = True


def _resume(*, using: str, **kwargs: Any) -> None:
    capture = _capture(using)
    if capture is not None:
        capture.paused = False


class DbeventsConfig(AppConfig):
    name = "dbevents"
    verbose_name = "dbevents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from dbevents import checks  # noqa: F401 -- registers the checks

        # Schema changes and data migrations are not business events: a data migration runs
        # historical models against a half-migrated schema, which current serializers cannot
        # describe. Capture is off on the migrated database from pre_migrate to post_migrate.
        pre_migrate.connect(_pause, dispatch_uid="dbevents.pause")
        post_migrate.connect(_resume, dispatch_uid="dbevents.resume")
