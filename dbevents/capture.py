"""Capture: the execute wrapper that turns writes to registered tables into pending events, and
the transaction bookkeeping that publishes them after COMMIT.

How the affected rows are found, per statement (see README, "How capture works"):

* PostgreSQL and SQLite (INSERT/UPDATE/DELETE) and MariaDB (INSERT, single-table DELETE): the
  statement gets ``RETURNING <the table's columns>`` appended (or extended). The rows come back
  with the statement itself -- exact under concurrency, no extra query -- and Django is handed
  exactly the result it would have had (:class:`ReplayCursor`).
* MySQL/MariaDB UPDATE and multi-table DELETE: the keys come from the statement's parameters
  when the WHERE clause is a primary-key filter, else from ``SELECT ... FOR UPDATE`` with the same
  WHERE, and the statement is then restricted to those keys so that rows inserted concurrently
  cannot slip in unseen. Autocommit statements run in a short transaction of their own.

Row images are kept per table and per row ("parts"); an event's instance is rebuilt from them
with ``Model.from_db`` after the database converters ran. Missing parts (MySQL updates, the parent
table of a multi-table-inheritance child) are loaded in one query per table, before any later
statement could change them and at the latest just before COMMIT.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from dbevents import conf, runtime, sqlite_gate
from dbevents.registry import ModelEntry, TableInfo, get_registry, hashable, table_key, unwrap_key
from dbevents.sql import (
    Merge,
    Part,
    Statement,
    analyse,
    analyse_merge,
    compound_writes,
    params_between,
    pk_only_where,
    split_statements,
    table_names,
    values_rows,
    write_target,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Model

    from dbevents.events import Event
    from dbevents.transport import Message

logger = logging.getLogger("dbevents")

CREATED, UPDATED, DELETED = "created", "updated", "deleted"
_RESTRICT_BY_RANGE = 200_000
_INTEGER_TYPES = frozenset(
    {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
     "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField", "PositiveSmallIntegerField"}
)


@dataclass(frozen=True)
class Committed:
    """A transaction's events at COMMIT, and their outbox rows when they went through the
    outbox (``messages`` is None for direct delivery)."""

    events: list[Event]
    messages: list[Message] | None


_NOTHING = Committed([], None)
# Vendors whose autocommit statements capture can wrap in a driver-level transaction.
_RAW_TRANSACTIONS = frozenset({"postgresql", "sqlite", "mysql"})


@dataclass(eq=False)
class Group:
    """A future event: one row changed by one statement (for multi-table inheritance, by the
    statements of one save that wrote the row's parent and child tables)."""

    order: tuple[int, int]
    root: type[Model]
    pk: Any
    action: str
    table: TableInfo                     # deepest table written so far
    tables: set[str]
    parts: dict[str, tuple[Any, ...]]    # table key -> converted values of its local fields
    mutes: tuple[runtime.Mute, ...]
    last: int                            # the last statement merged into this group
    top: int                             # shallowest table depth written (deletes climb the chain)
    entry: ModelEntry | None = None
    instance: Model | None = None

    @property
    def key(self) -> tuple[type[Model], Any]:
        return (self.root, self.pk)


_UNSET: Any = object()


class ReplayCursor:
    """Stands in for the driver cursor after capture consumed a statement's result.

    It replays the rows Django expects (its own RETURNING columns, without the ones capture
    added) or presents "no result set", as the driver does, when capture added the RETURNING
    clause itself; it shows the statement as the driver was given it (``shown``) to
    ``last_executed_query()``, and puts the real cursor back as soon as the next statement runs
    on it.
    """

    def __init__(self, wrapper: Any, raw: Any, rows: list[tuple[Any, ...]] | None,
                 description: Any, rowcount: int | None = None, lastrowid: Any = _UNSET,
                 shown: tuple[str, Any] | None = None) -> None:
        self._wrapper = wrapper
        self.raw = raw
        self._rows = rows
        self._pos = 0
        self.description = description
        self._rowcount = rowcount
        self._lastrowid = lastrowid
        self.shown = shown

    @property
    def rowcount(self) -> int:
        if self._rowcount is not None:
            return self._rowcount
        if self._rows is not None and self._pos < len(self._rows) and self._wrapper.db.vendor == "sqlite":
            # sqlite3 counts the rows of a statement with RETURNING once they have all been read.
            return 0
        return self.raw.rowcount  # type: ignore[no-any-return]

    @property
    def lastrowid(self) -> Any:
        return self.raw.lastrowid if self._lastrowid is _UNSET else self._lastrowid

    # What Django's last_executed_query() reads: psycopg 3's ClientCursor ``_query.query``,
    # psycopg2's ``query``, MySQLdb's ``_executed`` -- the statement without capture's rewrite.
    @property
    def _query(self) -> Any:
        driver = self.raw._query
        if self.shown is None or driver is None:
            return driver
        return SimpleNamespace(query=self._mogrified(), params=None)

    @property
    def query(self) -> Any:
        driver = self.raw.query
        return driver if self.shown is None or driver is None else self._mogrified()

    @property
    def _executed(self) -> Any:
        # MySQLdb sets it once a statement succeeded.
        driver = self.raw._executed
        return driver if self.shown is None or driver is None else self._mogrified()

    def _mogrified(self) -> bytes:
        sql, params = self.shown  # type: ignore[misc]
        text = self.raw.mogrify(sql, params) if hasattr(self.raw, "mogrify") else sql
        return text.encode() if isinstance(text, str) else text  # type: ignore[no-any-return]

    def _restore(self) -> Any:
        if self._wrapper.cursor is self:
            self._wrapper.cursor = self.raw
        return self.raw

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._restore().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self._restore().executemany(*args, **kwargs)

    def close(self) -> Any:
        return self._restore().close()

    def _no_result(self, empty: Any) -> Any:
        """The driver's answer to a fetch after a statement without a result set."""
        vendor = self._wrapper.db.vendor
        if vendor == "postgresql":
            import psycopg

            status = self.raw.pgresult.command_status.decode() if self.raw.pgresult is not None else ""
            raise psycopg.ProgrammingError(
                f"the last operation didn't produce records (command status: {status})"
            )
        return () if vendor == "mysql" and empty == [] else empty

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._rows is None:
            return self._no_result(None)  # type: ignore[no-any-return]
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int | None = None) -> Any:
        if self._rows is None:
            return self._no_result([])
        size = size or getattr(self.raw, "arraysize", 1) or 1
        rows = self._rows[self._pos:self._pos + size]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> Any:
        if self._rows is None:
            return self._no_result([])
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return rows

    def __iter__(self) -> Any:
        while (row := self.fetchone()) is not None:
            yield row

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.raw, name)
        if callable(value):
            # Any other cursor method (callproc, nextset, scroll, copy ...) starts something new
            # on the real cursor: step aside, as for the next execute().
            self._restore()
        return value


class DriverProxy:
    """Stands in for the driver cursor while a write to a registered table passes the inner
    execute wrappers: the statement reaches capture where it reaches the driver, as the
    wrappers passed it on. Anything else goes to the driver cursor."""

    def __init__(self, capture: ConnectionCapture, wrapper: Any, raw: Any,
                 watched: tuple[TableInfo | None, tuple[runtime.Mute, ...]], context: dict[str, Any]) -> None:
        self._capture = capture
        self._wrapper = wrapper
        self.raw = raw
        self._info, self._mutes = watched
        self._context = context

    def execute(self, sql: Any, params: Any = None) -> Any:
        self._wrapper.cursor = self.raw
        if type(sql) is not str:
            text = self._capture.text_of(sql)
            if text is None:
                return self.raw.execute(sql) if params is None else self.raw.execute(sql, params)
            sql = text
        return self._capture.capture_execute(self._info, self._mutes, self.raw, sql, params, self._context,
                                             self._capture._autocommit())

    def executemany(self, sql: Any, param_list: Any) -> Any:
        self._wrapper.cursor = self.raw
        if type(sql) is not str:
            text = self._capture.text_of(sql)
            if text is None:
                return self.raw.executemany(sql, param_list)
            sql = text
        return self._capture.capture_executemany(self._info, self._mutes, self.raw, sql, param_list, self._context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class ConnectionCapture:
    """Capture state of one ``DatabaseWrapper`` (so: one thread's connection to one alias).

    Installed as the outermost execute wrapper; called for every statement.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        # A proxy: the connection holds its capture, and a closed connection must be freed by
        # reference counting alone, as the stock one is (no cycle for the garbage collector).
        self.connection = weakref.proxy(connection)
        self.paused = False            # set while ``migrate`` runs on this connection
        self.internal = False          # the publisher thread's own connection: its queries are not logged
        self.groups: list[Group] = []  # this transaction's future events, in statement order
        self.latest: dict[tuple[type[Model], Any], Group] = {}
        self.incomplete: list[Group] = []
        self.statement_no = 0          # statements captured on this connection so far
        self.marks: dict[str, int] = {}  # savepoint id -> statement_no when it was created
        self.last_mark = 0             # statement_no at the latest savepoint
        self._layouts: dict[type[Model], list[tuple[str, int]]] = {}
        self._converters: dict[str, list[Any]] = {}
        self._sources: dict[type[Model], dict[str, tuple[str, int]]] = {}
        self._statement_tables: dict[int, str] = {}  # this transaction: statement -> table written
        self._schema: tuple[Any, str] | None = None  # (driver connection, its current schema)
        # SQLite: statements coordinate with the publisher thread's outbox writes.
        self.gated = connection.vendor == "sqlite"
        if self.gated:
            sqlite_gate.register(connection)

    @contextmanager
    def pause(self) -> Iterator[None]:
        """Capture nothing on this connection inside the block."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    # ------------------------------------------------------------------ the execute wrapper

    def __call__(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if self.gated:
            sqlite_gate.enter(self.connection)
            try:
                return self._statement(execute, sql, params, many, context)
            finally:
                sqlite_gate.leave(self.connection)
        return self._statement(execute, sql, params, many, context)

    def _statement(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if self.paused:
            return execute(sql, params, many, context)
        text = sql if type(sql) is str else self.text_of(sql)
        if text is None:
            return execute(sql, params, many, context)
        if ";" in text:
            several = split_statements(text, self.connection.vendor)
            if several is not None:
                result = execute(sql, params, many, context)
                self._warn_several(text, several)  # only when the driver did run them all
                return result
        target = write_target(text)
        if target is None:
            return execute(sql, params, many, context)
        watched = self._watched(target, text)
        if watched is None:
            return execute(sql, params, many, context)
        # The statement goes through the inner execute wrappers and Django's query log exactly
        # as the application wrote it; capture's rewrite happens at the driver (DriverProxy).
        wrapper = context["cursor"]
        raw = wrapper.cursor.raw if isinstance(wrapper.cursor, ReplayCursor) else wrapper.cursor
        proxy = DriverProxy(self, wrapper, raw, watched, context)
        wrapper.cursor = proxy
        try:
            return execute(sql, params, many, context)
        finally:
            if wrapper.cursor is proxy:  # an inner wrapper did not run the statement
                wrapper.cursor = raw

    def _watched(self, target: tuple[str, str], sql: str) -> tuple[TableInfo | None, tuple[runtime.Mute, ...]] | None:
        """The registered table a write statement changes (and the mutes in force), or None
        when capture has nothing to do with it."""
        if not conf.get("DBEVENTS_ENABLED"):
            return None
        registry = get_registry()
        kind, key = target
        if kind == "unsupported":
            self._warn_unsupported(sql, registry.tables)
            return None
        if kind == "compound":
            return self._watched_compound(sql, registry.tables)
        info = self._table_info(key)
        if info is None:
            return None
        mutes = runtime.mutes.get()
        if mutes and runtime.mutes_everything(mutes, info.labels):
            # Unheard, but it may change rows whose earlier events still need their data.
            self._complete([g for g in self.incomplete if g.root is info.root])
            return None
        return info, mutes

    def _table_info(self, key: str) -> TableInfo | None:
        """The watched table a statement names with ``key`` (normalised), if any."""
        tables = get_registry().tables
        info = tables.get(key)
        if info is None and "." in key:
            # A schema- or database-qualified name of a table the models name bare: the same
            # table only in the connection's own schema (database, on MySQL).
            qualifier, bare = key.rsplit(".", 1)
            if bare in tables and qualifier == self._own_schema():
                info = tables[bare]
        return info

    def _watched_compound(self, sql: str, tables: dict[str, TableInfo]) -> tuple[None, tuple[runtime.Mute, ...]] | None:
        """A statement that writes several tables (data-modifying CTEs, a multi-table UPDATE):
        captured (``None`` for "several tables") when one of its writes is to a watched table,
        or may be and the scanner cannot tell."""
        parts = compound_writes(sql, self.connection.vendor)
        if parts is None:
            self._warn_unsupported(sql, tables)
            return None
        for part in parts:
            if self._table_info(part.table) is not None or (not part.table and self._registered_in(part.text, tables)):
                return None, runtime.mutes.get()
        return None

    def _autocommit(self) -> bool:
        return not self.connection.in_atomic_block and self.connection.get_autocommit()

    def capture_execute(self, info: TableInfo | None, mutes: tuple[runtime.Mute, ...], raw: Any, sql: str,
                        params: Any, context: dict[str, Any], autocommit: bool) -> Any:
        """Run one write statement on the driver cursor ``raw`` and record its events; returns
        what the driver's ``execute()`` returns. ``info`` is the table it writes, None for a
        statement that writes several (data-modifying CTEs, a multi-table UPDATE).
        ``context["cursor"].cursor`` is ``raw`` on entry and whatever Django must read the result
        from (``raw`` or a :class:`ReplayCursor`) on exit."""

        def execute(run_sql: str, run_params: Any) -> Any:
            return raw.execute(run_sql) if run_params is None else raw.execute(run_sql, run_params)

        if info is None:
            return self._capture_compound(mutes, execute, sql, params, context, autocommit)
        try:
            stmt = analyse(sql, self.connection.vendor)
        except Exception:
            logger.exception("dbevents: could not analyse a write to %s on %r; its events are lost",
                             info.model._meta.label, self.connection.alias)
            stmt = None
        if stmt is None and write_target(sql) == ("merge", info.key):
            return self._capture_merge(info, mutes, execute, sql, params, context, autocommit)
        if stmt is None:
            logger.error("dbevents: a write to %s on %r has a shape capture cannot follow; no events "
                         "for it: %.300s", info.model._meta.label, self.connection.alias, sql)
            return execute(sql, params)
        returning = self._uses_returning(stmt, info, params)
        # An autocommit statement gets a transaction of its own when the outbox rows must commit
        # with it, or when MySQL must lock the rows it is about to change.
        if autocommit and (
            (conf.outbox_enabled() and self.connection.vendor in _RAW_TRANSACTIONS)
            or (self.connection.vendor == "mysql" and not returning)
        ):
            return self._in_raw_transaction(
                lambda: self._run(returning, stmt, info, execute, params, context, mutes, True), context
            )
        result = self._run(returning, stmt, info, execute, params, context, mutes, False)
        if autocommit and self.groups:
            self.flush_committed()
        return result

    def capture_executemany(self, info: TableInfo | None, mutes: tuple[runtime.Mute, ...], raw: Any, sql: str,
                            param_list: Any, context: dict[str, Any]) -> Any:
        """``executemany()``: no driver returns rows from a batch for every statement form, so
        each parameter set runs as one captured ``execute()`` on the driver cursor -- below the
        inner execute wrappers and the query log, which see one ``executemany()`` as on the stock
        engine. Where the driver's batch is all-or-nothing, so is this one."""
        vendor = self.connection.vendor
        wrapper = context["cursor"]
        rows = list(param_list)
        lastrowid = getattr(raw, "lastrowid", _UNSET)
        stmt = analyse(sql, vendor)
        if stmt is not None and info is not None and self._batch_returns(stmt, info, raw):
            return self._executemany_returning(stmt, info, mutes, raw, rows, context)
        inserting = stmt is not None and stmt.kind == "insert"
        # psycopg runs a batch in one transaction; MySQLdb turns INSERT ... VALUES into one
        # multi-row statement. SQLite runs the parameter sets one by one.
        atomic = vendor == "postgresql" or (vendor == "mysql" and inserting)
        autocommit = self._autocommit()
        ids: list[Any] = []

        def run_all() -> int:
            total = 0
            for one in rows:
                wrapper.cursor = raw
                self.capture_execute(info, mutes, raw, sql, one, context, autocommit and not atomic)
                count = wrapper.cursor.rowcount
                total += max(count, 0) if count is not None else 0
                if vendor == "mysql":
                    ids.append(wrapper.cursor.lastrowid)
            return total

        if autocommit and atomic:
            total = self._in_raw_transaction(run_all, context)
        elif atomic and vendor == "mysql":
            total = self._in_savepoint(run_all)
        else:
            total = run_all()
        if ids and inserting and info is not None:
            # As for one multi-row INSERT: the first generated key, or the last given one.
            lastrowid = ids[-1] if _names_keys(stmt, info) else ids[0]  # type: ignore[arg-type]
        wrapper.cursor = ReplayCursor(wrapper, raw, None, None, rowcount=total, lastrowid=lastrowid,
                                      shown=(sql, rows[-1] if rows else None))
        # What the driver's executemany() returns: MySQLdb the row count, sqlite3 the cursor.
        return {"mysql": total, "sqlite": raw}.get(vendor)

    def _batch_returns(self, stmt: Statement, info: TableInfo, raw: Any) -> bool:
        """Whether an ``executemany()`` can run as the driver's own batch with capture's
        RETURNING columns: psycopg 3 returns the rows of each statement of a batch
        (``returning=True``), when capture needs nothing read before the statement."""
        return (self.connection.vendor == "postgresql" and stmt.returning is None and not stmt.prefix_end
                and not (stmt.kind == "delete" and info.db_children)
                and getattr(getattr(self.connection, "Database", None), "__name__", "") == "psycopg")

    def _executemany_returning(self, stmt: Statement, info: TableInfo, mutes: tuple[runtime.Mute, ...], raw: Any,
                               rows: list[Any], context: dict[str, Any]) -> Any:
        """One driver batch (psycopg 3 sends it in a pipeline: one round trip, as the stock
        engine's ``executemany()``), each statement with capture's RETURNING columns."""
        columns, xmax = self._returning_columns(stmt, info)
        action = {"insert": CREATED, "update": UPDATED, "delete": DELETED}[stmt.kind]
        sql = f"{stmt.sql[:stmt.end]} RETURNING {', '.join(columns)}{stmt.sql[stmt.end:]}"
        wrapper = context["cursor"]

        def run() -> list[list[tuple[Any, Any, str]]]:
            if self.incomplete:
                keys = [self._statement_pks(stmt, info, one) for one in rows]
                pks = None if any(k is None for k in keys) else set().union(*keys)  # type: ignore[arg-type]
                self._settle_conflicts(info, action, pks, stmt.kind == "insert" and not stmt.upsert)
            raw.executemany(sql, rows, returning=True)
            results = []
            with self.connection.wrap_database_errors:
                while True:
                    results.append(raw.fetchall() if raw.description is not None else [])
                    if not raw.nextset():
                        break
            written = [self._returned(info, found, len(columns), action, xmax) for found in results]
            for recorded in written:
                self._record(info, self._next_statement(), _one_per_key(recorded) if stmt.upsert else recorded, mutes)
            return written

        if self._autocommit():
            written = self._in_raw_transaction(run, context)
        else:
            written = run()
        wrapper.cursor = ReplayCursor(wrapper, raw, None, None, rowcount=sum(len(w) for w in written),
                                      shown=(stmt.sql, rows[-1] if rows else None))
        return None  # what psycopg's executemany() returns

    def _in_savepoint(self, run: Callable[[], Any]) -> Any:
        """Run ``run`` behind a savepoint of the driver's own: on failure its writes and events
        are undone, the enclosing transaction goes on."""
        sid = "dbevents_batch"
        self._execute_own(f"SAVEPOINT {sid}")
        self.mark_savepoint(sid)
        try:
            result = run()
        except BaseException:
            self._execute_own(f"ROLLBACK TO SAVEPOINT {sid}")
            self.rollback_savepoint(sid)
            raise
        finally:
            self.marks.pop(sid, None)
        self._execute_own(f"RELEASE SAVEPOINT {sid}")
        return result

    def _run(self, returning: bool, stmt: Statement, info: TableInfo, execute: Callable[..., Any], params: Any,
             context: dict[str, Any], mutes: tuple[runtime.Mute, ...], own_transaction: bool) -> Any:
        if returning:
            return self._guarded(self._run_returning, stmt, info, execute, params, context, mutes)
        return self._guarded(self._run_selecting, stmt, info, execute, params, context, mutes, own_transaction)

    def _guarded(self, path: Callable[..., Any], stmt: Statement | Merge, info: TableInfo, execute: Callable[..., Any],
                 params: Any, context: dict[str, Any], *args: Any) -> Any:
        """Run a capture path so that capture's own failures never fail the write: before the
        statement ran, it runs unchanged and uncaptured; after, Django gets its result. Both
        are logged with the events they lose. The statement's own errors propagate."""
        state: dict[str, Any] = {}

        def run(sql: str, run_params: Any) -> Any:
            state["ran"] = sql
            state["result"] = execute(sql, run_params)
            return state["result"]

        try:
            result = path(stmt, info, run, params, context, *args)
        except Exception as exc:
            self._show(stmt, params, state, context)
            label, alias = info.model._meta.label, self.connection.alias
            if "ran" not in state and self._operational(exc):
                # A deadlock, lock timeout or lost connection while capture read the rows the
                # statement is about to change: the statement meets the same rows, and on MySQL
                # and PostgreSQL the transaction is gone. The application gets the error.
                logger.info("dbevents: reading the rows of a %s on %s (%r) failed; the error goes to the "
                            "application", stmt.keyword.upper(), label, alias, exc_info=True)
                raise
            if "ran" not in state:
                logger.exception("dbevents: capture failed before a %s on %s (%r); the statement runs uncaptured "
                                 "and its events are lost: %.300s", stmt.keyword.upper(), label, alias, stmt.sql)
                return execute(stmt.sql, params)
            if "result" not in state:
                raise  # the statement itself failed
            logger.exception("dbevents: the events of a %s on %s (%r) are lost: its rows could not be read",
                             stmt.keyword.upper(), label, alias)
            result = state["result"]
        self._show(stmt, params, state, context)
        return result

    @staticmethod
    def _show(stmt: Statement | Merge, params: Any, state: dict[str, Any], context: dict[str, Any]) -> None:
        """When capture changed the statement, Django's query log shows it as it was given."""
        if state.get("ran", stmt.sql) == stmt.sql:
            return
        wrapper = context["cursor"]
        if not isinstance(wrapper.cursor, ReplayCursor):
            wrapper.cursor = ReplayCursor(wrapper, wrapper.cursor, None, None)
        wrapper.cursor.shown = (stmt.sql, params)

    def _operational(self, exc: BaseException) -> bool:
        from django.db import OperationalError

        return isinstance(exc, (OperationalError, self.connection.Database.OperationalError))  # type: ignore[attr-defined]

    def _next_statement(self) -> int:
        self.statement_no += 1
        return self.statement_no

    def text_of(self, sql: Any) -> str | None:
        """The text of a statement given as ``bytes`` or a psycopg ``sql.SQL``/``Composed``
        (which the drivers accept), None for anything else."""
        if isinstance(sql, (bytes, bytearray, memoryview)):
            try:
                return bytes(sql).decode()
            except UnicodeDecodeError:
                logger.warning("dbevents: a statement given as bytes that are not UTF-8 runs uncaptured on %r: "
                               "%.300r", self.connection.alias, bytes(sql))
                return None
        as_string = getattr(sql, "as_string", None)
        if as_string is not None and type(sql).__module__.startswith("psycopg"):
            self.connection.ensure_connection()
            text: str = as_string(self.connection.connection)
            return text
        return None

    def _warn_several(self, sql: str, parts: list[str]) -> None:
        """Several statements in one ``execute()`` (PostgreSQL runs them; SQLite, and MySQL
        without ``CLIENT.MULTI_STATEMENTS``, refuse) run uncaptured: capture follows one
        statement at a time. Say so when they wrote registered tables."""
        tables = get_registry().tables
        hit = set()
        for part in parts:
            if write_target(part) is not None:
                hit |= self._registered_in(part, tables)
        if hit and conf.get("DBEVENTS_ENABLED"):
            logger.warning(
                "dbevents: %d statements in one execute() on %r write registered table(s) %s; dbevents "
                "captures one statement per execute(), so they produce no events -- run them one by one: "
                "%.300s", len(parts), self.connection.alias, ", ".join(sorted(hit)), sql,
            )

    def _own_schema(self) -> str | None:
        """The schema unqualified names resolve to (MySQL: the current database), read once
        per driver connection."""
        raw = self.connection.connection
        cached = self._schema
        if cached is not None and cached[0] is raw:
            return cached[1]
        query = {"postgresql": "SELECT current_schema()", "mysql": "SELECT DATABASE()"}.get(self.connection.vendor)
        name = str(self._query(query, None)[0][0] or "").lower() if query else "main"
        self._schema = (raw, name)
        return name

    def _registered_in(self, sql: str, tables: dict[str, TableInfo]) -> set[str]:
        return {name for name in table_names(sql) if name in tables and "." not in name}

    def _warn_unsupported(self, sql: str, tables: dict[str, TableInfo]) -> None:
        hit = self._registered_in(sql, tables)
        if hit:
            logger.warning(
                "dbevents: a statement dbevents cannot capture (TRUNCATE, or a WITH list, MERGE or "
                "multi-table UPDATE of a shape it cannot follow) mentions registered table(s) %s on %r; "
                "it produces no events: %.300s",
                ", ".join(sorted(set(hit))), self.connection.alias, sql,
            )

    # ------------------------------------------------------------------ statements that write several tables

    def _capture_compound(self, mutes: tuple[runtime.Mute, ...], execute: Callable[..., Any], sql: str,
                          params: Any, context: dict[str, Any], autocommit: bool) -> Any:
        """A statement that writes several tables: a WITH list that writes (PostgreSQL: ``WITH d
        AS (DELETE ... RETURNING *) INSERT INTO archive SELECT * FROM d``), a multi-table UPDATE
        (MySQL: ``UPDATE t JOIN u ON ... SET t.a = ..., u.b = ...``). The rows of each write are
        read and locked before it (a CTE's RETURNING rows never reach the client) and the write
        is restricted to them; a main statement after the CTEs takes the RETURNING path."""
        parts = compound_writes(sql, self.connection.vendor) or []
        watched = [(p, self._table_info(p.table)) for p in parts]
        first = next(((p, i) for p, i in watched if i is not None and p.stmt is not None), None)
        if first is None:  # only writes capture cannot follow
            self._warn_parts(watched, sql)
            return execute(sql, params)
        stmt, info = first[0].stmt, first[1]
        assert stmt is not None and info is not None

        def run() -> Any:
            return self._guarded(self._run_compound, stmt, info, execute, params, context, mutes, watched)

        if autocommit:
            return self._in_raw_transaction(run, context)
        return run()

    def _run_compound(self, stmt: Statement, info: TableInfo, run: Callable[[str, Any], Any], params: Any,
                      context: dict[str, Any], mutes: tuple[runtime.Mute, ...],
                      watched: list[tuple[Part, TableInfo | None]]) -> Any:
        sql, vendor = stmt.sql, self.connection.vendor
        if params is None and any(i is not None and p.before for p, i in watched):
            # Restricting a write gives the statement parameters: the driver then %-formats it.
            sql, params = sql.replace("%", "%%"), []
            watched = [(p, self._table_info(p.table)) for p in compound_writes(sql, vendor) or []]
        # A CTE's write is read before it runs, so its SELECT must not need a CTE that writes;
        # the main statement needs that only for the rows a DB_CASCADE deletes with its own.
        self._warn_parts([(p, i) for p, i in watched if p.stmt is None or not p.self_contained and (
            p.before or i is not None and p.stmt.kind == "delete" and bool(i.db_children))], sql)
        recorders: list[Callable[[], None]] = []
        # From the last write to the first, each analysed anew in the statement as restricted so far.
        for index in reversed(range(len(watched))):
            part, part_info = watched[index]
            if not part.before or part_info is None or part.stmt is None or not part.self_contained:
                continue
            restricted = self._before_write(part.stmt, part_info, params, mutes, recorders)
            if restricted != (sql, params):
                sql, params = restricted
                fresh = compound_writes(sql, vendor)
                if fresh is None or len(fresh) != len(watched):
                    raise RuntimeError(f"dbevents: the restricted statement cannot be analysed: {sql[:300]}")
                watched = [(p, i) for p, (_, i) in zip(fresh, watched, strict=True)]

        def run_and_record(run_sql: str, run_params: Any) -> Any:
            result = run(run_sql, run_params)
            for record in reversed(recorders):  # in text order
                record()
            return result

        main, main_info = watched[-1] if watched and not watched[-1][0].before else (None, None)
        if main is not None and main_info is not None and main.stmt is not None and (
                main.self_contained or main.stmt.kind != "delete" or not main_info.db_children):
            return self._run_returning(main.stmt, main_info, run_and_record, params, context, mutes)
        result = run_and_record(sql, params)
        wrapper = context["cursor"]
        raw = wrapper.cursor
        with self.connection.wrap_database_errors:
            rows = raw.fetchall() if raw.description is not None else None
            wrapper.cursor = ReplayCursor(wrapper, raw, rows, raw.description)
        return result

    def _before_write(self, stmt: Statement, info: TableInfo, params: Any, mutes: tuple[runtime.Mute, ...],
                      recorders: list[Callable[[], None]]) -> tuple[str, Any]:
        """Read (and lock) the rows one UPDATE/DELETE of a statement that writes several tables
        is about to write and restrict it to them, or take the keys an INSERT names; add what
        records its events once the statement ran."""
        label = info.model._meta.label
        if stmt.kind == "insert":
            given = self._given_keys(stmt, info, params)
            if given is None:
                logger.warning("dbevents: an INSERT into %s (table %s) on %r inside a WITH query, whose keys the "
                               "database generates, produces no events: a CTE's rows do not reach the client; give "
                               "the keys or move the INSERT out of the WITH list: %.300s", label, info.key,
                               self.connection.alias, stmt.sql)
                return stmt.sql, params
            existing = set(self._existing_keys(info, given)) if stmt.upsert or stmt.ignore else set()
            rows = [(k, None, CREATED) for k in given if k not in existing]
            if stmt.upsert:
                rows += [(k, None, UPDATED) for k in given if k in existing]
            recorders.append(lambda: self._record(info, self._next_statement(), _one_per_key(rows), mutes))
            return stmt.sql, params
        if stmt.kind == "delete":
            deleted = self._select_rows(stmt, info, params)
            keys = [info.pk_of(r) for r in deleted]
            cascaded = self._db_cascade(info, keys) if info.db_children else None
            self._settle_conflicts(info, DELETED, set(keys), False)

            def record_deleted() -> None:
                if cascaded:
                    self._record_cascade(cascaded, mutes)
                self._record(info, self._next_statement(), [(info.pk_of(r), r, DELETED) for r in deleted], mutes)

            recorders.append(record_deleted)
        else:
            keys = [info.pk_to_python(r) for r in self._select_rows(stmt, info, params, pk_only=True)]
            self._settle_conflicts(info, UPDATED, set(keys), False)
            recorders.append(lambda: self._record(info, self._next_statement(), [(k, None, UPDATED) for k in keys],
                                                  mutes))
        return self._restrict(stmt, info, params, keys)

    def _warn_parts(self, watched: list[tuple[Part, TableInfo | None]], sql: str) -> None:
        tables = get_registry().tables
        hit = {p.table for p, i in watched if i is not None} | {
            n for p, i in watched if not p.table for n in self._registered_in(p.text, tables)}
        if hit:
            logger.warning("dbevents: a write inside a WITH query to registered table(s) %s on %r has a shape "
                           "capture cannot follow (or names a CTE that writes); it produces no events: %.300s",
                           ", ".join(sorted(hit)), self.connection.alias, sql)

    # ------------------------------------------------------------------ MERGE

    def _capture_merge(self, info: TableInfo, mutes: tuple[runtime.Mute, ...], execute: Callable[..., Any],
                       sql: str, params: Any, context: dict[str, Any], autocommit: bool) -> Any:
        """``MERGE`` (PostgreSQL 15+; before 17 it has no RETURNING): the target rows its join
        matches are read and locked before it, its WHEN MATCHED clauses restricted to them; the
        keys its INSERT names are read from the source. After it, a row's new version (ctid)
        tells updated from untouched, a missing row was deleted -- and when these do not add up
        to its row count (an INSERT of generated keys), a WARNING says how many rows it missed."""
        merge = analyse_merge(sql)
        if merge is None:
            logger.warning("dbevents: a MERGE into %s (table %s) on %r has a shape capture cannot follow; it "
                           "produces no events: %.300s", info.model._meta.label, info.key, self.connection.alias, sql)
            return execute(sql, params)

        def run() -> Any:
            return self._guarded(self._run_merge, merge, info, execute, params, context, mutes)

        if autocommit:
            return self._in_raw_transaction(run, context)
        return run()

    def _run_merge(self, merge: Merge, info: TableInfo, run: Callable[[str, Any], Any], params: Any,
                   context: dict[str, Any], mutes: tuple[runtime.Mute, ...]) -> Any:
        qn = self.connection.ops.quote_name
        named = isinstance(params, dict)

        def between(a: int, b: int) -> list[Any]:
            if params is None or named:
                return []
            return list(params)[merge.count_params_before(a):merge.count_params_before(b)]

        args = params if named else (between(*merge.source) + between(*merge.on)) or None
        cols = ", ".join(f"{merge.ref}.{qn(_column(f))}" for f in info.fields)
        source = merge.sql[slice(*merge.source)]
        matched = self._query(
            f"SELECT {cols} FROM {merge.target} JOIN {source} ON {merge.sql[slice(*merge.on)]} "
            f"FOR UPDATE OF {merge.ref}", args) if any(c.matched and c.action != "nothing" for c in merge.clauses) else []
        before = {info.pk_of(r): r for r in (self._convert(info, raw) for raw in matched)}
        candidates = self._merge_insert_keys(info, merge, params, between)
        self._settle_conflicts(info, UPDATED, set(before) | set(candidates), False)
        versions = self._row_versions(info, [*before, *candidates])
        sql, run_params = self._restrict_merge(merge, info, params, list(before))
        result = run(sql, run_params)
        count = context["cursor"].cursor.rowcount
        after = self._row_versions(info, [*before, *candidates])
        deleted = [(k, row, DELETED) for k, row in before.items() if k not in after]
        updated = [(k, None, UPDATED) for k in before if k in after and after[k] != versions.get(k)]
        created = [(k, None, CREATED) for k in candidates if k in after and k not in versions]
        if count is not None and count > len(deleted) + len(updated) + len(created):
            logger.warning("dbevents: a MERGE into %s (table %s) on %r wrote %d row(s) whose keys capture cannot "
                           "know (an INSERT of generated keys: name the key column in its INSERT): they produce no "
                           "events", info.model._meta.label, info.key, self.connection.alias,
                           count - len(deleted) - len(updated) - len(created))
        for rows in (deleted, updated, created):
            self._record(info, self._next_statement(), rows, mutes)
        return result

    def _merge_insert_keys(self, info: TableInfo, merge: Merge, params: Any,
                           between: Callable[[int, int], list[Any]]) -> list[Any]:
        """The keys a MERGE's INSERT actions may write: their key expressions over the source."""
        keys: list[Any] = []
        names = [_column(f).lower() for f in info.pk_fields]
        for clause in merge.clauses:
            if clause.action != "insert" or clause.columns is None or clause.values is None:
                continue
            if not all(n in clause.columns for n in names):
                continue
            spans = [clause.values[clause.columns.index(n)] for n in names]
            exprs = ", ".join(merge.sql[a:b] for a, b in spans)
            args = params if isinstance(params, dict) else (
                [v for span in spans for v in between(*span)] + between(*merge.source)) or None
            found = self._query(f"SELECT DISTINCT {exprs} FROM {merge.sql[slice(*merge.source)]}", args)
            keys += [info.pk_to_python(tuple(r)) for r in found if None not in r]
        return list(dict.fromkeys(keys))

    def _row_versions(self, info: TableInfo, keys: list[Any]) -> dict[Any, str]:
        """PostgreSQL: each existing row's physical version (``ctid``), which any UPDATE changes."""
        qn = self.connection.ops.quote_name
        width = len(info.pk_fields)
        prepared = [p for p in (self._prepared(info, k) for k in dict.fromkeys(keys)) if p is not None]
        found: dict[Any, str] = {}
        for i in range(0, len(prepared), 10_000):
            chunk = prepared[i:i + 10_000]
            marks = _key_list(["%s"] * (len(chunk) * width), width)
            cols = ", ".join(qn(_column(f)) for f in info.pk_fields)
            rows = self._query(f"SELECT {cols}, ctid::text FROM {qn(info.model._meta.db_table)} "
                               f"WHERE {self._key_columns(info, None)} IN ({marks})", [v for c in chunk for v in c])
            found.update((info.pk_to_python(tuple(r[:width])), r[width]) for r in rows)
        return found

    def _restrict_merge(self, merge: Merge, info: TableInfo, params: Any, keys: list[Any]) -> tuple[str, Any]:
        """Add ``AND <key> IN (<the locked keys>)`` to each WHEN MATCHED clause, so a row that
        begins to match after capture read them is left alone rather than written unseen."""
        clauses = [c for c in merge.clauses if c.matched and c.action != "nothing"]
        if not clauses:
            return merge.sql, params
        sql = merge.sql if params is not None else merge.sql.replace("%", "%%")
        if params is None:
            merge = analyse_merge(sql) or merge
            clauses = [c for c in merge.clauses if c.matched and c.action != "nothing"]
        prep = [v for k in keys for v in info.pk_db_values(k, self.connection)]
        col = self._key_columns(info, merge.ref)
        named = isinstance(params, dict)
        plist: list[Any] = [] if named or params is None else list(params)
        new_params: dict[str, Any] = dict(params) if named else {}
        for n, clause in reversed(list(enumerate(clauses))):
            if named:
                names = [f"dbevents_pk_{n}_{i}" for i in range(len(prep))]
                new_params.update(zip(names, prep, strict=True))
                marks = _key_list([f"%({x})s" for x in names], len(info.pk_fields))
            else:
                marks = _key_list(["%s"] * len(prep), len(info.pk_fields))
                cut = merge.count_params_before(clause.then)
                plist[cut:cut] = prep
            cond = f"{col} IN ({marks})" if prep else "false"
            if clause.condition is not None:
                a, b = clause.condition
                sql = f"{sql[:a]} ({sql[a:b]}) AND {cond} {sql[b:]}"
            else:
                sql = f"{sql[:clause.then]}AND {cond} {sql[clause.then:]}"
        return sql, new_params if named else plist

    # ------------------------------------------------------------------ RETURNING path

    def _uses_returning(self, stmt: Statement, info: TableInfo, params: Any) -> bool:
        conn = self.connection
        if not conn.features.can_return_columns_from_insert:
            return False
        if conn.vendor in ("postgresql", "sqlite"):
            return True
        if conn.vendor == "mysql" and getattr(conn, "mysql_is_mariadb", False):
            if stmt.kind == "insert" and (stmt.upsert or stmt.replace):
                # Its row count and insert id (2 per updated row, 1 per unchanged one ...)
                # cannot be rebuilt from RETURNING rows: run it as written when its own
                # values name the keys it writes.
                return self._given_keys(stmt, info, params) is None
            return stmt.kind == "insert" or (stmt.kind == "delete" and not stmt.multi_table_delete)
        return False

    def _returning_columns(self, stmt: Statement, info: TableInfo) -> tuple[list[str], bool]:
        """What capture adds to a statement's RETURNING list: the table's columns, and on a
        PostgreSQL upsert whether each row is new (``xmax = 0``)."""
        qn = self.connection.ops.quote_name
        # SQLite's RETURNING sees the target table only and refuses its alias: bare names.
        prefix = "" if self.connection.vendor == "sqlite" else f"{_unqualified(stmt.ref)}."
        columns = [f"{prefix}{qn(_column(f))}" for f in info.fields]
        xmax = stmt.upsert and self.connection.vendor == "postgresql"
        if xmax:
            columns.append(f"({_unqualified(stmt.ref)}.xmax = 0)")
        return columns, xmax

    def _returned(self, info: TableInfo, rows: Iterable[Sequence[Any]], ours: int, action: str, xmax: bool,
                  existing: Any = None) -> list[tuple[Any, tuple[Any, ...], str]]:
        """The rows a statement returned through capture's columns (its last ``ours``), as
        (key, converted values, action)."""
        recorded = []
        for row in rows:
            value = tuple(row[-ours:])
            act = action
            if xmax:
                act = CREATED if value[-1] else UPDATED
                value = value[:-1]
            converted = self._convert(info, value)
            if existing is not None and act == CREATED and self._existed(info, converted, existing):
                act = UPDATED
            recorded.append((info.pk_of(converted), converted, act))
        return recorded

    def _run_returning(self, stmt: Statement, info: TableInfo, run: Callable[[str, Any], Any], params: Any,
                       context: dict[str, Any], mutes: tuple[runtime.Mute, ...]) -> Any:
        columns, xmax = self._returning_columns(stmt, info)
        action = {"insert": CREATED, "update": UPDATED, "delete": DELETED}[stmt.kind]
        existing = None
        if stmt.upsert and not xmax:
            existing = self._existing_before_upsert(stmt, info, params)
        # Only pending events can conflict: skip the key analysis on the usual path.
        pks = self._statement_pks(stmt, info, params) if self.incomplete else None
        self._settle_conflicts(info, action, pks, stmt.kind == "insert" and not stmt.upsert and not stmt.replace)
        replaced = self._replaced_rows(stmt, info, params) if stmt.replace else None
        cascaded = None
        if stmt.kind == "delete" and info.db_children:
            known = self._statement_pks(stmt, info, params)
            keys = list(known) if known is not None else [
                info.pk_to_python(r) for r in self._select_rows(stmt, info, params, pk_only=True)]
            cascaded = self._db_cascade(info, keys)
        if stmt.returning is not None:
            sql = f"{stmt.sql[:stmt.end]}, {', '.join(columns)}{stmt.sql[stmt.end:]}"
        else:
            sql = f"{stmt.sql[:stmt.end]} RETURNING {', '.join(columns)}{stmt.sql[stmt.end:]}"
        result = run(sql, params)
        wrapper = context["cursor"]
        raw = wrapper.cursor
        with self.connection.wrap_database_errors:
            rows = raw.fetchall()
            description = raw.description
        ours = len(columns)
        if stmt.returning is not None:
            wrapper.cursor = ReplayCursor(wrapper, raw, [tuple(r[:-ours]) for r in rows], description[:-ours])
        else:
            wrapper.cursor = ReplayCursor(wrapper, raw, None, None)
        recorded = self._returned(info, rows, ours, action, xmax, existing)
        if stmt.kind == "insert" and stmt.returning is None and self.connection.vendor == "mysql" and recorded:
            # RETURNING makes MySQLdb report neither the first new id nor upsert's 2-per-update
            # row count: give Django's cursor what the plain statement would have.
            created = [pk for pk, _, act in recorded if act == CREATED]
            wrapper.cursor = ReplayCursor(
                wrapper, raw, None, None,
                rowcount=(len(created) + 2 * (len(recorded) - len(created)) if stmt.upsert
                          else len(recorded) + len(replaced) if replaced else None),  # REPLACE: deleted + inserted
                lastrowid=self._mysql_lastrowid(stmt, info, params, created),
            )
            result = wrapper.cursor.rowcount  # what MySQLdb's execute() returns
        if stmt.upsert:
            recorded = _one_per_key(recorded)
        if replaced:
            self._record(info, self._next_statement(), [(info.pk_of(r), r, DELETED) for r in replaced], mutes)
        if cascaded:
            self._record_cascade(cascaded, mutes)
        self._record(info, self._next_statement(), recorded, mutes)
        return result

    def _db_cascade(self, info: TableInfo, keys: list[Any]) -> list[tuple[TableInfo, list[Any], str]]:
        """Before a DELETE of ``keys`` from ``info``: the rows of watched tables the database
        deletes (``DB_CASCADE``, through any depth) or updates (``DB_SET_NULL``,
        ``DB_SET_DEFAULT``) with them, read and locked in the same transaction."""
        found: list[tuple[TableInfo, list[Any], str]] = []
        todo = [(info, keys)]
        seen: set[tuple[str, Any]] = set()
        while todo:
            parent, parent_keys = todo.pop()
            for child, fk, operation in parent.db_children:  # fk: a ForeignKey
                if not parent_keys or fk.target_field not in parent.pk_fields:
                    continue
                rows = list(self._by_column(child, fk, parent_keys))
                rows = [r for r in rows if (child.key, child.pk_of(r)) not in seen]
                seen.update((child.key, child.pk_of(r)) for r in rows)
                if not rows:
                    continue
                if operation == "CASCADE":
                    found.append((child, rows, DELETED))
                    todo.append((child, [child.pk_of(r) for r in rows]))
                else:
                    found.append((child, [child.pk_of(r) for r in rows], UPDATED))
        return found

    def _record_cascade(self, found: list[tuple[TableInfo, list[Any], str]], mutes: tuple[runtime.Mute, ...]) -> None:
        """The events of the rows the database changed itself, deepest first (as Django's own
        collector orders deletes); SET NULL/DEFAULT rows are read back at COMMIT."""
        for child, rows, action in reversed(found):
            if action == DELETED:
                self._record(child, self._next_statement(), [(child.pk_of(r), r, DELETED) for r in rows], mutes)
            else:
                self._record(child, self._next_statement(), [(k, None, UPDATED) for k in rows], mutes)

    def _by_column(self, info: TableInfo, field: Any, values: list[Any]) -> Iterator[tuple[Any, ...]]:
        """``SELECT <info.fields> FROM <table> WHERE <field> IN (<values>) FOR UPDATE``, chunked;
        yields converted rows."""
        qn = self.connection.ops.quote_name
        cols = ", ".join(qn(_column(f)) for f in info.fields)
        lock = " FOR UPDATE" if self.connection.features.has_select_for_update else ""
        size = max(1, min((self.connection.features.max_query_params or 10_000) - 10, 10_000))
        target = field.target_field
        prep = [target.get_db_prep_value(unwrap_key(v), self.connection) for v in dict.fromkeys(values)]
        for i in range(0, len(prep), size):
            chunk = prep[i:i + size]
            sql = (f"SELECT {cols} FROM {qn(info.model._meta.db_table)} WHERE {qn(_column(field))} "
                   f"IN ({', '.join(['%s'] * len(chunk))}){lock}")
            for raw in self._query(sql, chunk):
                yield self._convert(info, raw)

    def _replaced_rows(self, stmt: Statement, info: TableInfo, params: Any) -> list[tuple[Any, ...]] | None:
        """The rows a REPLACE (``INSERT OR REPLACE``) is about to delete: those that share the
        primary key or a unique key with one of its rows. Read (and locked) before it runs;
        None, with a WARNING, when its values are not plain literals or parameters."""
        rows = values_rows(stmt, params)
        if rows is None and stmt.select_start is not None and stmt.columns:
            return self._replaced_by_query(stmt, info, params)
        if rows is None or not stmt.columns:
            self._settle_conflicts(info, DELETED, None, False)
            logger.warning("dbevents: %s on %s (table %s, %r) without a column list and plain VALUES or a SELECT: "
                           "the rows it replaces get no deleted event, its rows are reported as created",
                           stmt.keyword.upper(), info.model._meta.label, info.key, self.connection.alias)
            return None
        qn = self.connection.ops.quote_name
        conds, args = [], []
        for unique in _unique_sets(info):
            names = [_column(f).lower() for f in unique]
            if not all(n in stmt.columns for n in names):
                continue
            index = [stmt.columns.index(n) for n in names]
            keys = list(dict.fromkeys(tuple(r[i] for i in index) for r in rows))
            keys = [k for k in keys if None not in k]
            if not keys:
                continue
            cols = ", ".join(qn(n) for n in (_column(f) for f in unique))
            marks = _key_list(["%s"] * (len(keys) * len(unique)), len(unique))
            conds.append(f"{cols if len(unique) == 1 else f'({cols})'} IN ({marks})")
            args += [v for k in keys for v in k]
        if not conds:
            return []
        return self._replaced_where(info, "", conds, args)

    def _replaced_where(self, info: TableInfo, with_list: str, conds: list[str], args: Any) -> list[tuple[Any, ...]]:
        """Read (and lock) the rows of ``info`` that meet one of ``conds``: those a REPLACE deletes."""
        qn = self.connection.ops.quote_name
        lock = " FOR UPDATE" if self.connection.features.has_select_for_update else ""
        table = qn(info.model._meta.db_table)
        fields = ", ".join(qn(_column(f)) for f in info.fields)
        found = self._query(f"{with_list}SELECT {fields} FROM {table} WHERE {' OR '.join(conds)}{lock}", args)
        converted = [self._convert(info, r) for r in found]
        self._settle_conflicts(info, DELETED, {info.pk_of(r) for r in converted}, False)
        return converted

    def _replaced_by_query(self, stmt: Statement, info: TableInfo, params: Any) -> list[tuple[Any, ...]]:
        """``REPLACE INTO t (cols) SELECT ...``: the rows of ``t`` that share a primary or unique
        key with a row of its query, which runs once more for that (as a CTE with the INSERT's
        column names)."""
        assert stmt.select_start is not None and stmt.columns is not None
        qn = self.connection.ops.quote_name
        stop = stmt.returning_at if stmt.returning_at is not None else stmt.end
        names = [f"dbevents_c{i}" for i in range(len(stmt.columns))]
        rows_cte = f"dbevents_rows ({', '.join(names)}) AS ({stmt.sql[stmt.select_start:stop]}) "
        args = params_between(stmt, params, stmt.select_start, stop)
        if stmt.with_end:  # after the statement's own read-only CTEs, which its query may use
            with_list = f"{stmt.sql[:stmt.with_end]}, {rows_cte}"
            if not isinstance(params, dict):
                args = list(params_between(stmt, params, 0, stmt.with_end) or []) + list(args or [])
        else:
            with_list = f"WITH {rows_cte}"
        conds = []
        for unique in _unique_sets(info):
            wanted = [_column(f).lower() for f in unique]
            if not all(n in stmt.columns for n in wanted):
                continue
            cols = ", ".join(qn(_column(f)) for f in unique)
            picked = ", ".join(names[stmt.columns.index(n)] for n in wanted)
            conds.append(f"{cols if len(unique) == 1 else f'({cols})'} IN (SELECT {picked} FROM dbevents_rows)")
        if not conds:
            return []
        return self._replaced_where(info, with_list, conds, args)

    def _mysql_lastrowid(self, stmt: Statement, info: TableInfo, params: Any, created: list[Any]) -> Any:
        """MySQL's insert id: the first generated key of a multi-row INSERT, or the last
        one given explicitly."""
        if not created or not isinstance(created[0], int):
            return _UNSET
        return created[-1] if self._given_keys(stmt, info, params) is not None else created[0]

    def _existing_before_upsert(self, stmt: Statement, info: TableInfo, params: Any) -> Any:
        """What tells created from updated rows of an upsert where RETURNING cannot: the keys
        among the statement's own that exist already, else the highest key before it."""
        keys = self._given_keys(stmt, info, params)
        if keys is not None:
            return ("keys", (set(self._existing_keys(info, keys)), set(keys)))
        if info.pk.get_internal_type() in _INTEGER_TYPES:
            qn = self.connection.ops.quote_name
            found = self._query(f"SELECT MAX({qn(_column(info.pk))}) FROM {qn(info.model._meta.db_table)}", ())
            return ("max", found[0][0] if found and found[0][0] is not None else None)
        return None

    def _existed(self, info: TableInfo, row: tuple[Any, ...], existing: Any) -> bool:
        kind, value = existing
        pk = info.pk_of(row)
        if kind == "keys":
            before, given = value
            # A row that conflicted on another unique key keeps its own, older key.
            return pk in before or pk not in given
        return value is not None and pk <= value

    # ------------------------------------------------------------------ SELECT ... FOR UPDATE path

    def _run_selecting(self, stmt: Statement, info: TableInfo, run: Callable[[str, Any], Any], params: Any,
                       context: dict[str, Any], mutes: tuple[runtime.Mute, ...], own_transaction: bool) -> Any:
        """Databases without RETURNING for this statement (MySQL; MariaDB UPDATE and multi-table
        DELETE). Runs inside a transaction: the caller's, or one of its own."""
        action = {"insert": CREATED, "update": UPDATED, "delete": DELETED}[stmt.kind]
        if stmt.kind == "insert":
            return self._insert_without_returning(stmt, info, run, params, context, mutes)
        sql = stmt.sql
        known = self._statement_pks(stmt, info, params)
        deleted_rows: list[tuple[Any, ...]] = []
        cascaded = None
        if stmt.kind == "delete":
            deleted_rows = self._select_rows(stmt, info, params)
            keys = [info.pk_of(r) for r in deleted_rows]
            if info.db_children:
                cascaded = self._db_cascade(info, keys)
        elif known is not None:
            keys = list(known)
        else:
            keys = [info.pk_to_python(r) for r in self._select_rows(stmt, info, params, pk_only=True)]
        self._settle_conflicts(info, action, set(keys), False)
        if known is None or set(keys) != set(known):
            sql, params = self._restrict(stmt, info, params, keys)
        result = run(sql, params)
        if known is not None and stmt.kind == "update":
            keys = self._matched_keys(info, keys, context["cursor"].cursor.rowcount)
        if cascaded:
            self._record_cascade(cascaded, mutes)
        order = self._next_statement()
        if stmt.kind == "delete":
            self._record(info, order, [(info.pk_of(r), r, action) for r in deleted_rows], mutes)
        else:
            self._record(info, order, [(k, None, action) for k in keys], mutes)
            if own_transaction:
                self._complete(self.incomplete)
        return result

    def _matched_keys(self, info: TableInfo, keys: list[Any], rowcount: int) -> list[Any]:
        """The keys of a primary-key UPDATE that matched a row. MySQL reports matched rows
        (Django connects with CLIENT.FOUND_ROWS); only a partial match needs a look-up, and
        the rows it finds are the ones this transaction just locked by updating them."""
        if rowcount == len(keys):
            return keys
        if rowcount <= 0:
            return []
        return self._existing_keys(info, keys)

    def _insert_without_returning(self, stmt: Statement, info: TableInfo, run: Callable[[str, Any], Any],
                                  params: Any, context: dict[str, Any], mutes: tuple[runtime.Mute, ...]) -> Any:
        given = self._given_keys(stmt, info, params)
        existing: set[Any] = set()
        if given is not None and (stmt.upsert or stmt.ignore):
            existing = set(self._existing_keys(info, given))
        replaced = self._replaced_rows(stmt, info, params) if stmt.replace else None
        result = run(stmt.sql, params)
        raw = context["cursor"].cursor
        if replaced:
            self._record(info, self._next_statement(), [(info.pk_of(r), r, DELETED) for r in replaced], mutes)
        order = self._next_statement()
        if given is not None:
            created = [k for k in given if k not in existing]
            rows_written = [(k, None, CREATED) for k in created]
            if stmt.upsert:
                rows_written += [(k, None, UPDATED) for k in given if k in existing]
            self._record(info, order, _one_per_key(rows_written), mutes)
        elif stmt.upsert or stmt.ignore:
            logger.error("dbevents: %s on %s (%r) without primary keys in its values: this database cannot "
                         "tell which rows it wrote, so it produces no events", stmt.keyword.upper(),
                         info.model._meta.label, self.connection.alias)
        else:
            first, count = raw.lastrowid, raw.rowcount
            # MySQL reports the first id of a multi-row insert; ids are consecutive for InnoDB
            # "simple inserts" with auto_increment_increment = 1.
            self._record(info, order, [(first + i, None, CREATED) for i in range(count)], mutes)
        return result

    def _in_raw_transaction(self, run: Callable[[], Any], context: dict[str, Any]) -> Any:
        """Run an autocommit statement in a transaction of the driver's own, invisible to
        Django's transaction state and query log, and commit it with its events (and their
        outbox rows); publish them after the COMMIT."""
        vendor = self.connection.vendor
        raw = self.connection.connection
        with self.connection.wrap_database_errors:
            if vendor == "sqlite":
                raw.execute(f"BEGIN {getattr(self.connection, 'transaction_mode', None) or ''}".rstrip())
            elif vendor == "mysql":
                raw.autocommit(False)
            else:
                raw.autocommit = False
        try:
            result = run()
            if vendor == "sqlite":
                _buffer_result(context)
            committed = self.prepare_commit()
            with self.connection.wrap_database_errors:
                raw.commit()
        except BaseException:
            self.discard()
            with self.connection.wrap_database_errors:
                raw.rollback()
            raise
        finally:
            with self.connection.wrap_database_errors:
                if vendor == "mysql":
                    raw.autocommit(True)
                elif vendor != "sqlite":
                    raw.autocommit = True
        self.publish(committed)
        return result

    def _select_rows(self, stmt: Statement, info: TableInfo, params: Any, pk_only: bool = False) -> list[tuple[Any, ...]]:
        """SELECT (and lock) the rows an UPDATE/DELETE is about to write, with its own WHERE."""
        qn = self.connection.ops.quote_name
        if pk_only:
            cols = ", ".join(f"{stmt.ref}.{qn(_column(f))}" for f in info.pk_fields)
        else:
            cols = ", ".join(f"{stmt.ref}.{qn(_column(f))}" for f in info.fields)
        where = f" WHERE {stmt.sql[stmt.where[0]:stmt.where[1]]}" if stmt.where else ""
        stop = stmt.returning_at if stmt.returning_at is not None else stmt.end
        tail = stmt.sql[stmt.where_end:stop] if stmt.where_end < stop else ""
        # The parameters of the join list (DELETE), WHERE, ORDER BY and LIMIT, in that order.
        start = stmt.where[0] if stmt.kind == "update" and stmt.where else (stmt.from_start or stmt.where_end)
        if stmt.kind == "update" and not stmt.where:
            start = stmt.where_end
        select_params = params_between(stmt, params, start, stop)
        joins = None
        if stmt.kind == "update" and stmt.from_start is not None:  # MySQL: UPDATE <join list> SET
            joins = (stmt.from_start, stmt.set_start or stmt.from_start)
        elif stmt.kind == "update" and stmt.join_list is not None:  # PostgreSQL: UPDATE t SET ... FROM <join list>
            joins = stmt.join_list
        if joins is not None and not isinstance(params, dict):
            # Its join list's parameters come first.
            select_params = list(params_between(stmt, params, *joins) or []) + list(select_params or [])
        features = self.connection.features
        lock = " FOR UPDATE" if features.has_select_for_update else ""
        if lock and stmt.join_list is not None and features.has_select_for_update_of:
            lock = f" FOR UPDATE OF {stmt.ref}"  # as the statement, lock the target's rows only
        with_list = stmt.sql[:stmt.with_end]  # a leading read-only WITH list the WHERE may use
        if with_list and not isinstance(params, dict):
            select_params = list(params_between(stmt, params, 0, stmt.with_end) or []) + list(select_params or [])
        rows = self._query(f"{with_list} SELECT {cols} FROM {stmt.source}{where} {tail}{lock}", select_params)
        # A join can meet a row several times.
        if pk_only:
            return list({tuple(r): r for r in rows}.values())
        unique: dict[Any, tuple[Any, ...]] = {}
        for r in rows:
            converted = self._convert(info, r)
            unique.setdefault(info.pk_of(converted), converted)
        return list(unique.values())

    def _restrict(self, stmt: Statement, info: TableInfo, params: Any, keys: list[Any]) -> tuple[str, Any]:
        """Limit an UPDATE/DELETE to the rows capture locked, so concurrently inserted rows
        that match its WHERE cannot be written without an event."""
        col = self._key_columns(info, stmt.ref)
        prep = [v for k in keys for v in info.pk_db_values(k, self.connection)]
        sql = stmt.sql
        # The driver %-formats a statement only when it has parameters: escape the original
        # text when capture gives it its first ones.
        esc: Callable[[str], str] = (lambda text: text.replace("%", "%%")) if params is None else str
        if params is None:
            params = []
        if isinstance(params, dict):
            names = [f"dbevents_pk_{i}" for i in range(len(prep))]
            marks = _key_list([f"%({n})s" for n in names], len(info.pk_fields))
            new_params: Any = {**params, **dict(zip(names, prep, strict=True))}
        else:
            marks = _key_list(["%s"] * len(prep), len(info.pk_fields))
            plist = list(params)
            cut = stmt.count_params_before(stmt.where_end)
            new_params = plist[:cut] + prep + plist[cut:]
        cond = f"{col} IN ({marks})" if prep else "1 = 0"
        if len(prep) > _RESTRICT_BY_RANGE and not info.composite and info.pk.get_internal_type() in _INTEGER_TYPES:
            # Beyond this many keys the list would strain max_allowed_packet. The range of the
            # locked keys is exact unless another transaction, between the SELECT and this
            # statement, makes a row inside it match the WHERE (see README).
            low, high = min(prep), max(prep)
            if isinstance(params, dict):
                marks_range = "%(dbevents_pk_low)s AND %(dbevents_pk_high)s"
                new_params = {**params, "dbevents_pk_low": low, "dbevents_pk_high": high}
            else:
                marks_range = "%s AND %s"
                new_params = plist[:cut] + [low, high] + plist[cut:]
            cond = f"{col} BETWEEN {marks_range}"
        if stmt.where:
            a, b = stmt.where
            new_sql = f"{esc(sql[:a])} ({esc(sql[a:b])}) AND {cond} {esc(sql[b:])}"
        else:
            new_sql = f"{esc(sql[:stmt.where_end])} WHERE {cond} {esc(sql[stmt.where_end:])}"
        return new_sql, new_params

    # ------------------------------------------------------------------ shared helpers

    def _statement_pks(self, stmt: Statement, info: TableInfo, params: Any) -> set[Any] | None:
        """Keys a statement touches when its own parameters say so; None when they don't."""
        if stmt.kind == "insert":
            return None
        joined = stmt.kind == "update" and stmt.from_start is not None  # MySQL multi-table UPDATE
        if (stmt.where is None or isinstance(params, dict) or info.composite or joined
                or not pk_only_where(stmt, _column(info.pk))):
            return None
        values = params_between(stmt, params, stmt.where[0], stmt.where[1])
        return {info.pk_to_python((v,)) for v in values}

    def _given_keys(self, stmt: Statement, info: TableInfo, params: Any) -> list[Any] | None:
        """The primary keys an INSERT's VALUES name, when they are plain parameters."""
        rows = values_rows(stmt, params)
        if rows is None or not _names_keys(stmt, info):
            return None
        indexes = [stmt.columns.index(_column(f).lower()) for f in info.pk_fields]  # type: ignore[union-attr]
        return [info.pk_to_python(tuple(r[i] for i in indexes)) for r in rows]

    def _query(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run capture's own SELECT on a bare driver cursor: no execute wrappers, not in
        ``connection.queries``, not counted by ``assertNumQueries``."""
        conn = self.connection
        conn.ensure_connection()
        with conn.wrap_database_errors:
            cursor = conn.create_cursor()
            try:
                if params is None:
                    cursor.execute(sql)
                else:
                    cursor.execute(sql, params)
                return list(cursor.fetchall())
            finally:
                cursor.close()

    def _convert(self, info: TableInfo, raw: Iterable[Any]) -> tuple[Any, ...]:
        converters = self._converters.get(info.key)
        if converters is None:
            converters = []
            for f in info.fields:
                # get_col(), not cached_col: a foreign key's column converts as its target
                # field (a parent link to a UUID key is a UUID), as in the ORM's own SELECTs.
                col = f.get_col(f.model._meta.db_table)
                converters.append(
                    (self.connection.ops.get_db_converters(col) + col.get_db_converters(self.connection), col)
                )
            self._converters[info.key] = converters
        out = []
        for value, (funcs, col) in zip(raw, converters, strict=True):
            for func in funcs:
                value = func(value, col, self.connection)
            out.append(value)
        return tuple(out)

    def _by_keys(self, info: TableInfo, keys: list[Any], fields: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """``SELECT <fields> FROM <table> WHERE pk IN (<keys>)``, in chunks the database accepts;
        yields converted rows."""
        qn = self.connection.ops.quote_name
        cols = ", ".join(qn(_column(f)) for f in fields)
        width = len(info.pk_fields)
        size = max(1, min((self.connection.features.max_query_params or 10_000) - 10, 10_000) // width)
        prepared = [p for p in (self._prepared(info, k) for k in dict.fromkeys(keys)) if p is not None]
        table = qn(info.model._meta.db_table)
        for i in range(0, len(prepared), size):
            chunk = prepared[i:i + size]
            marks = _key_list(["%s"] * (len(chunk) * width), width)
            prep = [v for values in chunk for v in values]
            sql = f"SELECT {cols} FROM {table} WHERE {self._key_columns(info, None)} IN ({marks})"
            for raw in self._query(sql, prep):
                yield self._convert(info, raw) if fields is info.fields else raw

    def _prepared(self, info: TableInfo, key: Any) -> list[Any] | None:
        """``key``'s column values for the database, or None when it is no value the table can
        hold (a key from a statement's own parameters: MySQL refuses 0 for an AutoField)."""
        try:
            return info.pk_db_values(key, self.connection)
        except (ValueError, TypeError):
            return None

    def _existing_keys(self, info: TableInfo, keys: list[Any]) -> list[Any]:
        return [info.pk_to_python(row) for row in self._by_keys(info, keys, info.pk_fields)]

    def _key_columns(self, info: TableInfo, ref: str | None) -> str:
        """The primary key's column reference(s): ``t."id"``, or ``(t."a", t."b")``."""
        qn = self.connection.ops.quote_name
        cols = [f"{ref}.{qn(_column(f))}" if ref else qn(_column(f)) for f in info.pk_fields]
        return cols[0] if len(cols) == 1 else f"({', '.join(cols)})"

    # ------------------------------------------------------------------ recording

    def _record(self, info: TableInfo, order: int, rows: Sequence[tuple[Any, tuple[Any, ...] | None, str]],
                mutes: tuple[runtime.Mute, ...]) -> None:
        """Add one group per row (or merge it into the same object's group: one save of a
        multi-table-inheritance model writes the parent table, then the child's)."""
        self._statement_tables[order] = info.key
        if not rows:
            return
        try:
            rows = sorted(rows, key=lambda r: r[0])
        except TypeError:  # keys of mixed types: keep the statement's order
            pass
        label = info.entry.model._meta.label if info.entry else None
        for index, (pk, values, action) in enumerate(rows):
            if mutes and label and not info.descendants and runtime.is_muted(mutes, label, pk):
                continue
            key = (info.root, pk)
            group = self.latest.get(key)
            if group is not None and self._merges(group, info, action, order):
                group.tables.add(info.key)
                group.last = order
                group.top = min(group.top, info.depth)
                if info.depth > group.table.depth:
                    group.table = info
                if values is not None:
                    group.parts[info.key] = values
                continue
            group = Group(
                order=(order, index), root=info.root, pk=pk, action=action, table=info,
                tables={info.key}, parts={info.key: values} if values is not None else {},
                mutes=mutes, last=order, top=info.depth,
            )
            self.groups.append(group)
            self.latest[key] = group
            if values is None or info.depth or info.descendants:
                self.incomplete.append(group)

    def _merges(self, group: Group, info: TableInfo, action: str, order: int) -> bool:
        """Whether this statement continues the same object's write rather than making a new
        event: ``save()`` of a multi-table-inheritance model writes the parent table, then the
        child's, in consecutive statements; a cascade deletes the child row, then the parent's.
        Never across a savepoint (it could be rolled back alone)."""
        if group.action != action or info.key in group.tables or group.instance is not None:
            return False
        if group.last <= self.last_mark:
            return False
        if action == DELETED:
            return info.depth < group.top
        if info.depth <= group.table.depth:
            return False
        # Consecutive statements -- or separated only by writes to parents this model reaches
        # through links of their own (``Shop(Place, Tagged)`` inserts shop_tagged in between).
        between = range(group.last + 1, order)
        if not between:
            return True
        linked = self._key_sources(info.model)
        return all(self._statement_tables.get(n) in linked for n in between)

    def _settle_conflicts(self, info: TableInfo, action: str, pks: set[Any] | None, inserting: bool) -> None:
        """Before a statement may change rows whose pending events still lack row data, load
        that data, so every event carries the row as it stood after its own statement."""
        if not self.incomplete or inserting:
            return
        todo = []
        for group in self.incomplete:
            if group.root is not info.root or (pks is not None and group.pk not in pks):
                continue
            merges = (pks is not None and self.latest.get(group.key) is group
                      and self._merges(group, info, action, self.statement_no + 1))
            if not merges:
                todo.append(group)
        if todo:
            self._complete(todo)

    # ------------------------------------------------------------------ materialising

    def _complete(self, groups: list[Group]) -> None:
        """Resolve each group's model and load the row data it still lacks (one query per
        table). Groups whose row no longer exists, or whose model is not registered, are
        dropped: they describe no registered object."""
        if not groups:
            return
        pending = [g for g in groups if g.instance is None]
        registry = get_registry()
        # Multi-table inheritance: the most derived registered model that has this row.
        by_table: dict[str, list[Group]] = {}
        for group in pending:
            group.entry = group.table.entry
            if group.table.descendants and group.action != DELETED:
                by_table.setdefault(group.table.key, []).append(group)
        for groups_here in by_table.values():
            unresolved = {g.pk: g for g in groups_here}
            for desc in groups_here[0].table.descendants:
                if not unresolved:
                    break
                dinfo = registry.tables[desc.tables[0]]
                source = self._key_sources(desc.model).get(groups_here[0].table.key)
                if source is not None:
                    self._resolve_linked(desc, dinfo, source, unresolved)
                    continue
                for pk in self._existing_keys(dinfo, list(unresolved)):
                    found = unresolved.pop(pk, None)
                    if found is not None:
                        found.entry = desc
        # Load missing parts, table by table: first the tables that share the row's key, then
        # those reached through a parent link of their own (multiple inheritance, a child with
        # its own primary key), keyed by the link's value in a part already loaded.
        todo = [g for g in pending if g.entry is not None]
        tried: set[tuple[int, str]] = set()
        while todo:
            need: dict[str, list[tuple[Group, Any]]] = {}
            deferred = []
            for group in todo:
                sources = self._key_sources(group.entry.model)  # type: ignore[union-attr]
                for key in group.entry.tables:  # type: ignore[union-attr]
                    if key in group.parts or (id(group), key) in tried:
                        continue
                    source = sources.get(key)
                    if source is not None and source[0] not in group.parts:
                        deferred.append(group)  # its link's table is loaded first
                        continue
                    tried.add((id(group), key))
                    wanted = group.pk if source is None else group.parts[source[0]][source[1]]
                    if wanted is not None:
                        need.setdefault(key, []).append((group, group.pk if source is None else hashable(wanted)))
            for key, waiting in need.items():
                tinfo = registry.tables[key]  # every table of a registered model's chain is watched
                rows = self._load_parts(tinfo, [k for _, k in waiting])
                folded = {_fold(k): k for k in rows}
                for group, wanted in waiting:
                    row = rows.get(wanted)
                    if row is None and wanted not in rows:
                        # A key from the statement's parameters that the database matched under a
                        # case-insensitive or pad-space collation ('abc' for 'ABC'): use the stored one.
                        stored = folded.get(_fold(wanted))
                        if stored is not None:
                            row = rows[stored]
                            if wanted == group.pk:
                                group.pk = stored
                    if row is not None:
                        group.parts[key] = row
            # Another round only for groups whose link source was loaded in this one.
            todo = list({id(g): g for g in deferred}.values()) if need else []
        done = {id(g) for g in pending}
        for group in pending:
            if group.entry is None:
                logger.debug("dbevents: %s row %r belongs to no registered model", group.table.model._meta.label, group.pk)
                group.instance = None
                group.entry = None
            else:
                group.instance = self._build(group)
        self.incomplete = [g for g in self.incomplete if id(g) not in done]
        dropped = {id(g) for g in pending if g.instance is None}
        if dropped:
            self.groups = [g for g in self.groups if id(g) not in dropped]

    def _resolve_linked(self, desc: ModelEntry, dinfo: TableInfo, source: tuple[str, int],
                        unresolved: dict[Any, Group]) -> None:
        """Rows of a parent table that a descendant reaches through a parent link of its own
        (``Shop(Place, Tagged)``: ``shop_shop.tagged_ptr_id`` -> ``shop_tagged.tag_id``): such a
        row's event is the descendant's, under the descendant's key. When the same transaction
        already has that event (the save wrote the descendant's own tables too), it is dropped."""
        registry = get_registry()
        link_info = registry.tables[source[0]]
        if self._key_sources(desc.model).get(link_info.key) is not None:
            return  # the link lives on a table that is itself linked: not followed
        link_field = link_info.fields[source[1]]
        rows = list(self._by_column(link_info, link_field, list(unresolved)))
        if link_info.key != dinfo.key and rows:
            # The link lives on an intermediate parent (Senator -> Congressman -> Politician):
            # only rows that are the descendant's are its events.
            mine = set(self._existing_keys(dinfo, [link_info.pk_of(r) for r in rows]))
            rows = [r for r in rows if link_info.pk_of(r) in mine]
        for row in rows:
            found = unresolved.pop(hashable(row[source[1]]), None)
            if found is None:
                continue
            found.entry, found.root, found.pk = desc, dinfo.root, link_info.pk_of(row)
            found.parts = {source[0]: row}
            if any(g is not found and g.key == found.key and g.action == found.action for g in self.groups):
                found.entry = None  # dropped with the groups of no registered model

    def _key_sources(self, model: type[Model]) -> dict[str, tuple[str, int]]:
        """For each table of ``model``'s inheritance chain that does not share the row's key:
        ``(table, column index)`` of the parent link whose value is its key there."""
        cached = self._sources.get(model)
        if cached is not None:
            return cached
        sources: dict[str, tuple[str, int] | None] = {table_key(model._meta.db_table): None}
        for child in [model, *model._meta.get_parent_list()]:
            child_key = table_key(child._meta.db_table)
            for parent, link in child._meta.parents.items():
                parent_key = table_key(parent._meta.concrete_model._meta.db_table)  # type: ignore[union-attr]
                if link is None or parent_key in sources or child_key not in sources:
                    continue
                columns = [f.column for f in child._meta.local_concrete_fields]
                if link.primary_key or link.column not in columns:
                    sources[parent_key] = sources[child_key]
                else:
                    sources[parent_key] = (child_key, columns.index(link.column))
        found = {k: v for k, v in sources.items() if v is not None}
        self._sources[model] = found
        return found

    def _load_parts(self, info: TableInfo, pks: list[Any]) -> dict[Any, tuple[Any, ...]]:
        return {info.pk_of(row): row for row in self._by_keys(info, pks, info.fields)}

    def _build(self, group: Group) -> Model | None:
        model = group.entry.model  # type: ignore[union-attr]
        layout = self._layouts.get(model)
        if layout is None:
            layout = []
            for f in model._meta.concrete_fields:
                owner: Any = f.model._meta.concrete_model  # type: ignore[union-attr]
                layout.append((table_key(owner._meta.db_table), list(owner._meta.local_concrete_fields).index(f)))
            self._layouts[model] = layout
        values = []
        for key, index in layout:
            part = group.parts.get(key)
            if part is None:
                logger.warning("dbevents: %s row %r was not found when its %s event was built; the event is "
                               "lost", model._meta.label, group.pk, group.action)
                return None
            values.append(part[index])
        names = [f.attname for f in model._meta.concrete_fields]
        instance = model.from_db(self.connection.alias, names, values)
        return instance

    # ------------------------------------------------------------------ transaction lifecycle

    def prepare(self, *, peek: bool = False, after: int = 0) -> list[Event]:
        """Build this transaction's events (inside it, before COMMIT). Never raises: a failure
        is logged with the models and keys whose events are lost.

        With ``peek`` the events stay pending (testing helpers); ``after`` then limits them to
        statements captured after that statement number.
        """
        if not self.groups:
            return []
        from dbevents.serialization import build_events

        groups = self.groups
        try:
            self._complete([g for g in groups if g.instance is None])
            groups = [g for g in self.groups if g.instance is not None and g.order[0] > after]
            events = build_events(groups, self.connection.alias)
        except Exception:
            logger.exception(
                "dbevents: the events of a transaction on %r are lost (%s)", self.connection.alias,
                _describe(groups),
            )
            events = []
        if not peek:
            self.discard()
        return events

    def flush_committed(self) -> None:
        """Publish the events of statements that are already committed (autocommit)."""
        self.publish(Committed(self.prepare(), None))

    def publish(self, committed: Committed) -> None:
        """Hand a committed transaction's events to the publisher (after COMMIT)."""
        if committed.events:
            from dbevents.transport import publish

            publish(committed.events, alias=self.connection.alias, messages=committed.messages)

    def prepare_commit(self) -> Committed:
        """:meth:`prepare` at COMMIT, and the events' outbox rows written in the same
        transaction (``DBEVENTS_DELIVERY = "outbox"``). On PostgreSQL any failed query aborts the
        transaction and would silently turn the COMMIT into a rollback, so this runs behind a
        savepoint there, rolled back to if anything failed."""
        if not self.groups:
            return _NOTHING
        # Nothing may escape from here: an exception out of commit() that is not a DatabaseError
        # commits anyway on SQLite and MariaDB, and leaves a PostgreSQL connection inside a
        # transaction Django has forgotten.
        groups = self.groups
        postgresql = self.connection.vendor == "postgresql"
        try:
            if postgresql:
                self._execute_own("SAVEPOINT dbevents_prepare")
            events = self.prepare()
            messages = self._store(events)
            if postgresql and self._pg_transaction_failed():
                self._execute_own("ROLLBACK TO SAVEPOINT dbevents_prepare")
        except Exception:
            logger.exception("dbevents: the events of a transaction on %r are lost (%s)",
                             self.connection.alias, _describe(groups))
            self.discard()
            return _NOTHING
        return Committed(events, messages)

    def _store(self, events: list[Event]) -> list[Message] | None:
        """Write ``events`` to the outbox when it is on (and no testing sink keeps them from
        the broker); None means "publish directly". A failure falls back to direct delivery,
        logged with the event ids."""
        if not events or not conf.outbox_enabled():
            return None
        from dbevents import outbox, transport
        from dbevents.events import describe_events

        if not transport.publishing():
            return None
        try:
            return outbox.store(self.connection, transport.encode(events))
        except Exception as exc:
            logger.error(
                "dbevents: writing %d event(s) to the outbox of %r failed (%s: %s); they are published "
                "directly, without the outbox's guarantee (is the dbevents app migrated on this database? "
                "manage.py migrate dbevents --database=%s): %s", len(events), self.connection.alias,
                type(exc).__name__, exc, self.connection.alias, describe_events(events), exc_info=True,
            )
            return None

    def _pg_transaction_failed(self) -> bool:
        raw = self.connection.connection
        info = getattr(raw, "info", None)  # psycopg 3; psycopg2 has get_transaction_status()
        status = info.transaction_status if info is not None else raw.get_transaction_status()
        return int(status) == 3  # libpq's PQTRANS_INERROR

    def _execute_own(self, sql: str) -> None:
        with self.connection.wrap_database_errors:
            cursor = self.connection.create_cursor()
            try:
                cursor.execute(sql)
            finally:
                cursor.close()

    def discard(self) -> None:
        """Forget this transaction's events (rollback, close, or handed over for publishing)."""
        self.groups = []
        self.latest = {}
        self.incomplete = []
        self._statement_tables = {}
        self.marks = {}
        self.last_mark = self.statement_no

    def mark_savepoint(self, sid: str) -> None:
        """Remember where savepoint ``sid`` was created (Atomic's and ``transaction.savepoint()``'s)."""
        self.marks[sid] = self.last_mark = self.statement_no

    def rollback_savepoint(self, sid: str) -> None:
        """Drop the events of the statements run since savepoint ``sid`` was created."""
        mark = self.marks.get(sid)
        if mark is None or not self.groups:
            return
        self.groups = [g for g in self.groups if g.order[0] <= mark]
        keep = {id(g) for g in self.groups}
        self.incomplete = [g for g in self.incomplete if id(g) in keep]
        self.latest = {}
        for group in self.groups:
            self.latest[group.key] = group
        # Statements after the rollback must not merge into what stood before it.
        self.last_mark = self.statement_no


def _buffer_result(context: dict[str, Any]) -> None:
    """SQLite refuses to COMMIT while a statement still has rows to hand out (a RETURNING that
    capture did not consume, because it ran the statement uncaptured): read them first."""
    wrapper = context["cursor"]
    raw = wrapper.cursor
    if isinstance(raw, ReplayCursor) or raw.description is None:
        return
    rows = raw.fetchall()
    wrapper.cursor = ReplayCursor(wrapper, raw, rows, raw.description, rowcount=raw.rowcount, lastrowid=raw.lastrowid)


def _names_keys(stmt: Statement, info: TableInfo) -> bool:
    """Whether an INSERT's column list gives every primary-key column."""
    return bool(stmt.columns) and all(_column(f).lower() in stmt.columns for f in info.pk_fields)  # type: ignore[operator]


def _unique_sets(info: TableInfo) -> list[tuple[Any, ...]]:
    """The column sets of a table that a row must not share with another: the primary key,
    unique fields, ``unique_together`` and unconditional ``UniqueConstraint``s."""
    opts = info.model._meta
    local = {f.name: f for f in opts.local_concrete_fields}
    sets: list[tuple[Any, ...]] = [tuple(info.pk_fields)]
    sets += [(f,) for f in opts.local_concrete_fields if f.unique and not f.primary_key]
    groups = [tuple(g) for g in opts.unique_together]
    groups += [tuple(c.fields) for c in opts.constraints  # type: ignore[attr-defined]
               if getattr(c, "fields", None) and getattr(c, "condition", None) is None
               and not getattr(c, "expressions", None) and type(c).__name__ == "UniqueConstraint"]
    for names in groups:
        if all(n in local for n in names):
            sets.append(tuple(local[n] for n in names))
    return sets


def _one_per_key(rows: list[tuple[Any, Any, str]]) -> list[tuple[Any, Any, str]]:
    """An upsert that meets one key twice (``VALUES (1, ...), (1, ...)``) changed one row: one
    event, created if the statement created it, with the row as the statement left it."""
    merged: dict[Any, tuple[Any, Any, str]] = {}
    for pk, values, action in rows:
        prev = merged.get(pk)
        if prev is not None:
            action = CREATED if CREATED in (prev[2], action) else action
            values = values if values is not None else prev[1]
        merged[pk] = (pk, values, action)
    return list(merged.values()) if len(merged) != len(rows) else rows


def _key_list(marks: list[str], width: int) -> str:
    """Placeholders for ``IN (...)``: ``%s, %s`` for single-column keys, ``(%s, %s), (%s, %s)``
    for composite ones."""
    if width == 1:
        return ", ".join(marks)
    return ", ".join(f"({', '.join(marks[i:i + width])})" for i in range(0, len(marks), width))


def _fold(value: Any) -> Any:
    return value.casefold().rstrip() if isinstance(value, str) else value


def _unqualified(ref: str) -> str:
    """``main.shop_product`` -> ``shop_product``: SQLite's RETURNING takes no schema, and the
    bare name is as valid everywhere else."""
    from dbevents.sql import split_qualified

    return split_qualified(ref)[-1]


def _column(field: Any) -> str:
    """A concrete field's column name (typed ``str | None`` on ``Field``)."""
    column: str = field.column
    return column


def _describe(groups: list[Group]) -> str:
    """``"shop.Order pks=[1, 2]; shop.Item pks=[7]"``: which rows a log line is about."""
    by_model: dict[str, list[Any]] = {}
    for g in groups:
        label = g.entry.label if g.entry else g.table.model._meta.label
        by_model.setdefault(label, []).append(g.pk)
    return "; ".join(
        f"{label} pks={pks[:20]}{'...' if len(pks) > 20 else ''}" for label, pks in by_model.items()
    )


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
        committed = self.dbevents.prepare_commit() if not self.in_atomic_block else _NOTHING  # type: ignore[attr-defined]
        super().commit()  # type: ignore[misc]
        self.dbevents.publish(committed)

    def rollback(self) -> None:
        try:
            super().rollback()  # type: ignore[misc]
        finally:
            self.dbevents.discard()

    def savepoint(self) -> str | None:
        sid: str | None = super().savepoint()  # type: ignore[misc]
        if sid is not None:
            self.dbevents.mark_savepoint(sid)
        return sid

    def savepoint_rollback(self, sid: str) -> None:
        super().savepoint_rollback(sid)  # type: ignore[misc]
        self.dbevents.rollback_savepoint(sid)

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            self.dbevents.discard()
