"""One write statement on its way through capture: the per-statement state every capture path
takes (``returning``, ``locking``, ``compound``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dbevents import runtime
from dbevents.capture.pending import PendingEvents, Row, one_per_key
from dbevents.capture.rows import CREATED, DELETED, UPDATED, Rows, statement_pks
from dbevents.capture.vendors import Vendor
from dbevents.registry import TableInfo

logger = logging.getLogger("dbevents")

@dataclass
class Write:
    """A statement that writes a watched table, and what capture has of its connection."""

    stmt: Any                        # the analysed statement: a sql.Statement (sql.Merge for MERGE)
    info: TableInfo                  # the watched table it writes (the first one, for several)
    params: Any
    run: Callable[[str, Any], Any]   # runs the statement (as capture rewrote it) on the driver cursor
    context: dict[str, Any]          # the execute wrapper's context: ``context["cursor"]`` is Django's
    mutes: tuple[runtime.Mute, ...]
    connection: Any
    vendor: Vendor
    rows: Rows
    pending: PendingEvents
    own_transaction: bool = False    # an autocommit statement in capture's own transaction

    @property
    def cursor(self) -> Any:
        """Django's ``CursorWrapper`` the statement runs on (its ``.cursor`` is the driver's)."""
        return self.context["cursor"]

    def record(self, info: TableInfo, rows: Sequence[Row]) -> None:
        """The rows this statement changed in ``info``, as pending events."""
        self.pending.record(info, rows, self.mutes)


def replaced_rows(w: Write) -> list[tuple[Any, ...]] | None:
    """The rows a REPLACE (``INSERT OR REPLACE``) of ``w`` is about to delete, read and locked
    before it; None, with a WARNING, when its shape does not say which (no column list)."""
    stmt, info = w.stmt, w.info
    found = w.rows.replaced(stmt, info, w.params)
    if found is None:
        w.pending.settle(info, DELETED, None, False)
        logger.warning("dbevents: %s on %s (table %s, %r) without a column list and plain VALUES or a SELECT: "
                       "the rows it replaces get no deleted event, its rows are reported as created",
                       stmt.keyword.upper(), info.model._meta.label, info.key, w.connection.alias)
        return None
    w.pending.settle(info, DELETED, {info.pk_of(r) for r in found}, False)
    return found


def cascade_of(w: Write, keys: list[Any] | None = None) -> list[tuple[TableInfo, list[Any], str]] | None:
    """Before a DELETE of a table that watched children are tied to by a database-level
    ``on_delete``: the rows the database deletes or updates with it (see ``Rows.db_cascade``)."""
    stmt, info = w.stmt, w.info
    if stmt.kind != "delete" or not info.db_children:
        return None
    if keys is None:
        known = statement_pks(stmt, info, w.params)
        keys = list(known) if known is not None else w.rows.keys_of_statement(stmt, info, w.params)
    return w.rows.db_cascade(info, keys)


def rows_by_given_keys(w: Write, stmt: Any, info: TableInfo, given: list[Any]) -> list[Row]:
    """The rows an INSERT whose VALUES name the keys ``given`` is about to write: created, or
    for an upsert updated where the key exists already (read before it runs)."""
    existing = set(w.rows.existing_keys(info, given)) if stmt.upsert or stmt.ignore else set()
    rows: list[Row] = [(k, None, CREATED) for k in given if k not in existing]
    if stmt.upsert:
        rows += [(k, None, UPDATED) for k in given if k in existing]
    return one_per_key(rows)
