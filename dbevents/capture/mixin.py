"""CaptureMixin: what a ``DatabaseWrapper`` gains from dbevents -- the execute wrapper, and the
commit / rollback / savepoint / close hooks that keep its pending events in step with the
transaction."""

from __future__ import annotations

import weakref
from typing import Any

from dbevents import publisher
from dbevents.capture.commit import NOTHING
from dbevents.capture.wrapper import ConnectionCapture
from dbevents.outbox_sql import CommitError


class CaptureMixin:
    """Mixin for a ``DatabaseWrapper`` class: adds dbevents capture and nothing else.

    Put it first in the bases of any engine's ``DatabaseWrapper``::

        from django.contrib.gis.db.backends.postgis import base

        class DatabaseWrapper(CaptureMixin, base.DatabaseWrapper):
            pass

    Then point ``ENGINE`` at the module's package (Django imports ``<ENGINE>.base``).
    """

    dbevents: ConnectionCapture

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dbevents = ConnectionCapture(self)  # type: ignore[arg-type]
        # Outermost, so capture sees the SQL as Django wrote it.
        self.execute_wrappers.insert(0, self.dbevents)  # type: ignore[attr-defined]
        # Emptying every table (``manage.py flush``, TransactionTestCase teardown) is not a
        # business event either.
        ops_class, ops = type(self.ops), weakref.ref(self.ops)  # type: ignore[attr-defined]
        capture = weakref.proxy(self.dbevents)

        def execute_sql_flush(sql_list: list[str]) -> None:
            with capture.pause():
                ops_class.execute_sql_flush(ops(), sql_list)

        self.ops.execute_sql_flush = execute_sql_flush  # type: ignore[attr-defined]

    @property
    def queries_logged(self) -> bool:
        # dbevents' own queries (the publisher thread's connection) are not the application's.
        return not self.dbevents.internal and super().queries_logged  # type: ignore[misc]

    def commit(self) -> None:
        committed = NOTHING
        if not self.in_atomic_block:  # type: ignore[attr-defined]
            try:
                committed = self.dbevents.prepare_commit(commit_with_outbox=True)
            except CommitError as failed:
                raise failed.error from None  # what the COMMIT raises on the stock engine
        super().commit()  # type: ignore[misc]  # nothing left to do when the outbox INSERT committed
        publisher.publish(committed)

    def rollback(self) -> None:
        try:
            super().rollback()  # type: ignore[misc]
        finally:
            self.dbevents.discard()

    def savepoint(self) -> str | None:
        sid: str | None = super().savepoint()  # type: ignore[misc]
        if sid is not None:
            self.dbevents.pending.mark_savepoint(sid)
        return sid

    def savepoint_rollback(self, sid: str) -> None:
        super().savepoint_rollback(sid)  # type: ignore[misc]
        # The database undid the statements since the savepoint: so are their events.
        self.dbevents.pending.rollback_savepoint(sid)

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            self.dbevents.discard()
