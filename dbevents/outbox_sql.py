"""The outbox INSERT of :func:`dbevents.outbox.store`, per driver: multi-row INSERTs on a bare
driver cursor, or on PostgreSQL one INSERT of column arrays (no execute wrappers either way, so
the rows stay out of ``connection.queries`` and of capture). On PostgreSQL (psycopg 3) a small
INSERT goes in one round trip with the savepoint before it and the COMMIT after it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

TABLE = "dbevents_outbox"
# In the order of the row tuples :func:`dbevents.outbox.store` builds.
COLUMNS = ("event_id", "transaction_id", "ordinal", "service_name", "routing_key", "body", "content_type",
            "content_encoding", "headers", "created_at", "available_at", "lease_owner", "attempts", "last_error",
            "event_key", "dead_at")


#: Up to this many rows, psycopg 3 sends the INSERT as text with its savepoint and COMMIT.
COMBINED_ROWS = 200


class CommitError(Exception):
    """The COMMIT sent with the outbox INSERT failed (a deferred constraint, a serialization
    failure): the transaction is gone, and its ``error`` is the application's."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def insert(connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]], *, arrays: bool,
           savepoint: str | None = None, commit: bool = False) -> list[int]:
    """Insert ``rows`` (tuples in :data:`COLUMNS` order) in the current transaction, after
    creating ``savepoint`` if given; returns the new ids in row order. With ``commit`` the
    transaction is committed with them where the driver can send both at once (the caller's
    COMMIT then has nothing left to do). ``arrays``: the driver takes one array per column
    (psycopg 3)."""
    if arrays and (savepoint or commit) and len(rows) <= COMBINED_ROWS:
        return _insert_combined(connection, rows, savepoint, commit)
    if savepoint:
        with connection.wrap_database_errors:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(f"SAVEPOINT {savepoint}")
            finally:
                cursor.close()
    return _insert_postgresql(connection, rows) if arrays else _insert(connection, rows)


def _insert(connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]]) -> list[int]:
    """Multi-row INSERTs on a bare driver cursor; the new ids in row order."""
    qn = connection.ops.quote_name
    width = len(COLUMNS)
    per_chunk = max(1, min(500, (connection.features.max_query_params or 30_000) // width))
    returning = connection.features.can_return_rows_from_bulk_insert
    head = f"INSERT INTO {qn(TABLE)} ({', '.join(qn(c) for c in COLUMNS)}) VALUES "
    row_sql = "(" + ", ".join(["%s"] * width) + ")"
    ids: list[int] = []
    with connection.wrap_database_errors:
        cursor = connection.create_cursor()
        try:
            for start in range(0, len(rows), per_chunk):
                chunk = rows[start:start + per_chunk]
                sql = head + ", ".join([row_sql] * len(chunk))
                params = [value for row in chunk for value in row]
                if returning:
                    cursor.execute(sql + f" RETURNING {qn('id')}", params)
                    ids += [int(r[0]) for r in cursor.fetchall()]
                else:
                    # MySQL: one multi-row INSERT gets consecutive ids from the first one.
                    cursor.execute(sql, params)
                    first = int(cursor.lastrowid)
                    ids += range(first, first + len(chunk))
        finally:
            cursor.close()
    return ids


# PostgreSQL (psycopg 3): one INSERT ... SELECT FROM unnest(<one array per column>) for any number
# of rows, with the arrays sent in binary on a server-binding cursor -- 14 parameters instead of
# 14 per row for Django's client-side-binding cursor to quote into the query text.
_PG_TYPES = ("text", "text", "integer", "text", "text", "bytea", "text", "text", "text", "timestamptz",
             "timestamptz", "text", "integer", "text", "text", "timestamptz")
_PG_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%b::{t}[]" for t in _PG_TYPES) + ") RETURNING id, event_id"
)


def _insert_combined(connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]], savepoint: str | None,
                     commit: bool) -> list[int]:
    """One simple query (psycopg 3 binds client-side): ``SAVEPOINT; INSERT ... RETURNING;
    COMMIT``. Raises :class:`CommitError` when the INSERT went in and the COMMIT failed."""
    import psycopg

    row_sql = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    sql = (f"{f'SAVEPOINT {savepoint}; ' if savepoint else ''}INSERT INTO {TABLE} ({', '.join(COLUMNS)}) "
           f"VALUES {', '.join([row_sql] * len(rows))} RETURNING id, event_id{'; COMMIT' if commit else ''}")
    raw = connection.connection
    cursor = psycopg.ClientCursor(raw)
    try:
        try:
            with connection.wrap_database_errors:
                cursor.execute(sql, [value for row in rows for value in row])
        except Exception as exc:
            if commit and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                raise CommitError(exc) from exc
            raise
        if savepoint:
            cursor.nextset()   # past the SAVEPOINT's result
        by_event = {str(event_id): int(i) for i, event_id in cursor.fetchall()}
    finally:
        cursor.close()
    return [by_event[row[0]] for row in rows if row[0] in by_event]


def _insert_postgresql(connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]]) -> list[int]:
    """The rows as one array per column; the new ids in row order (matched by event id)."""
    import psycopg

    columns = [list(column) for column in zip(*rows, strict=True)]
    with connection.wrap_database_errors:
        cursor = psycopg.Cursor(connection.connection)
        try:
            cursor.execute(_PG_INSERT, columns)
            by_event = {str(event_id): int(i) for i, event_id in cursor.fetchall()}
        finally:
            cursor.close()
    return [by_event[row[0]] for row in rows if row[0] in by_event]
