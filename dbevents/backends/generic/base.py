"""Wrap any engine named in the database settings: ``ENGINE = "dbevents.backends.generic"``
with ``"DBEVENTS_WRAPPED_ENGINE": "<the engine to wrap>"`` in the same ``DATABASES`` entry."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS

from dbevents.backends import wrap


def DatabaseWrapper(settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> Any:  # noqa: N802
    """Build the wrapped engine's connection wrapper (Django calls ``DatabaseWrapper(...)``)."""
    engine = settings_dict.get("DBEVENTS_WRAPPED_ENGINE")
    if not engine or not isinstance(engine, str) or engine.startswith("dbevents.backends.generic"):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] uses ENGINE 'dbevents.backends.generic' but its "
            f"'DBEVENTS_WRAPPED_ENGINE' is {engine!r}: set it to the engine to wrap, "
            "e.g. 'django.contrib.gis.db.backends.postgis'."
        )
    return wrap(engine)(settings_dict, alias)
