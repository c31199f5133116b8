"""Database engines with dbevents capture.

``dbevents.backends.postgresql``, ``.sqlite3`` and ``.mysql`` wrap Django's own engines. Any
other engine can be wrapped in two ways:

* a module of your own (the route Django documents for subclassing backends)::

      # myproject/db/base.py   ->   ENGINE = "myproject.db"
      from django.contrib.gis.db.backends.postgis import base
      from dbevents.capture import CaptureMixin

      class DatabaseWrapper(CaptureMixin, base.DatabaseWrapper):
          pass

* or, with no module at all, ``ENGINE = "dbevents.backends.generic"`` and the engine to wrap
  in the same ``DATABASES`` entry: ``"DBEVENTS_WRAPPED_ENGINE": "django.contrib.gis.db.backends.postgis"``.
"""

from __future__ import annotations

import functools
from importlib import import_module
from typing import Any


@functools.cache
def wrap(engine: str) -> type[Any]:
    """Return ``engine``'s ``DatabaseWrapper`` class with :class:`~dbevents.capture.CaptureMixin`
    mixed in (built once per engine). ``engine`` is an ENGINE value, e.g.
    ``"django.contrib.gis.db.backends.postgis"``."""
    from dbevents.capture import CaptureMixin

    base = import_module(f"{engine}.base").DatabaseWrapper
    if issubclass(base, CaptureMixin):
        return base
    return type("DatabaseWrapper", (CaptureMixin, base), {"__module__": base.__module__, "__qualname__": f"dbevents({base.__qualname__})"})
