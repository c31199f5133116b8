"""The execute wrapper: for every statement of a connection, decide whether capture has anything
to do with it (one anchored regular expression for anything that is not a write), and for a
write to a watched table choose its path -- RETURNING, SELECT ... FOR UPDATE, several tables --
run it in a transaction of its own when it autocommits, and guard it so that capture's own
failures never fail the write."""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dbevents import conf, publisher, runtime, sqlite_gate
from dbevents.capture import batch, commit, compound, locking, returning
from dbevents.capture.cursor import ReplayCursor, buffer_result, replay
from dbevents.capture.pending import PendingEvents
from dbevents.capture.rows import Rows, given_keys
from dbevents.capture.vendors import vendor_for
from dbevents.capture.write import Write
from dbevents.events import Committed
from dbevents.outbox_sql import CommitError
from dbevents.registry import TableInfo, get_registry
from dbevents.sql import analyse, analyse_merge, compound_writes, split_statements, write_target

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from dbevents.events import Event

logger = logging.getLogger("dbevents")

Watched = tuple["TableInfo | None", tuple[runtime.Mute, ...]]  # None: a statement that writes several tables


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
        self.vendor = vendor_for(self.connection)
        self.rows = Rows(self.connection, self.vendor)
        self.pending = PendingEvents(self.connection, self.rows)
        self.pending.spill = functools.partial(commit.spill, vendor=self.vendor)
        self._schema: tuple[Any, str] | None = None  # (driver connection, its current schema)
        if self.vendor.gated:  # statements coordinate with the publisher thread's outbox writes
            sqlite_gate.register(connection)

    @contextmanager
    def pause(self) -> Iterator[None]:
        """Capture nothing on this connection inside the block."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    # ------------------------------------------------------------------ the door

    def __call__(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if self.vendor.gated:
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
            several = split_statements(text, self.vendor.name)
            if several is not None:
                result = execute(sql, params, many, context)
                compound.warn_several(self.connection, text, several)  # only when the driver did run them all
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

    def _watched(self, target: tuple[str, str], sql: str) -> Watched | None:
        """The watched table a write statement changes (and the mutes in force), or None when
        capture has nothing to do with it."""
        if not conf.get("DBEVENTS_ENABLED"):
            return None
        tables = get_registry().tables
        kind, key = target
        if kind == "unsupported":
            compound.warn_unsupported(self.connection, sql, tables)
            return None
        if kind == "compound":
            parts = compound_writes(sql, self.vendor.name)
            if parts is None:
                compound.warn_unsupported(self.connection, sql, tables)
                return None
            if any(self.table_info(p.table) is not None or (not p.table and compound.registered_in(p.text, tables))
                   for p in parts):
                return None, runtime.mutes.get()
            return None
        info = self.table_info(key)
        if info is None:
            return None
        mutes = runtime.mutes.get()
        if mutes and runtime.mutes_everything(mutes, info.labels):
            # Unheard, but it may change rows whose earlier events still need their data.
            self.pending.load_missing_of(info)
            return None
        return info, mutes

    def table_info(self, key: str) -> TableInfo | None:
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

    def autocommit(self) -> bool:
        return not self.connection.in_atomic_block and self.connection.get_autocommit()

    # ------------------------------------------------------------------ at the driver

    def capture_execute(self, info: TableInfo | None, mutes: tuple[runtime.Mute, ...], raw: Any, sql: str,
                        params: Any, context: dict[str, Any], autocommit: bool) -> Any:
        """Run one write statement on the driver cursor ``raw`` and record its events; returns
        what the driver's ``execute()`` returns. ``info`` is the table it writes, None for a
        statement that writes several (data-modifying CTEs, a multi-table UPDATE).
        ``context["cursor"].cursor`` is ``raw`` on entry and whatever Django must read the result
        from (``raw`` or a :class:`ReplayCursor`) on exit."""

        def execute(run_sql: str, run_params: Any) -> Any:
            begin = self.vendor.take_begin()   # capture's own transaction starts with this statement
            result = raw.execute(begin + run_sql) if run_params is None else raw.execute(begin + run_sql, run_params)
            if begin:
                self.vendor.began_with_statement = True
                raw.nextset()  # the statement's result, after the BEGIN's
            return result

        if info is None:
            return self._several(mutes, execute, sql, params, context, autocommit)
        try:
            stmt = analyse(sql, self.vendor.name)
        except Exception:
            logger.exception("dbevents: could not analyse a write to %s on %r; its events are lost",
                             info.model._meta.label, self.connection.alias)
            stmt = None
        if stmt is None and write_target(sql) == ("merge", info.key):
            merge = analyse_merge(sql)
            if merge is not None:
                return self._run(compound.run_merge, merge, info, execute, params, context, mutes, autocommit)
        if stmt is None:
            logger.warning("dbevents: a write to %s (table %s) on %r has a shape capture cannot follow; no "
                           "events for it: %.300s", info.model._meta.label, info.key, self.connection.alias, sql)
            return execute(sql, params)
        path = returning.run if self.vendor.uses_returning(stmt, _keys_given(stmt, info, params)) else locking.run
        # An autocommit statement gets a transaction of its own when the outbox rows must commit
        # with it, or when the rows it is about to change must be locked first.
        own = autocommit and (conf.outbox_enabled() or (path is locking.run and self.vendor.locks_in_own_transaction))
        result = self._run(path, stmt, info, execute, params, context, mutes, own)
        if autocommit and not own and self.pending.events:
            self.flush_committed()
        return result

    def _several(self, mutes: tuple[runtime.Mute, ...], execute: Callable[..., Any], sql: str, params: Any,
                 context: dict[str, Any], autocommit: bool) -> Any:
        """A statement that writes several tables (see :mod:`dbevents.capture.compound`)."""
        watched = [(p, self.table_info(p.table)) for p in compound_writes(sql, self.vendor.name) or []]
        first = next(((p, i) for p, i in watched if i is not None and p.stmt is not None), None)
        if first is None:  # only writes capture cannot follow
            compound.warn_parts(self.connection, watched, sql)
            return execute(sql, params)
        assert first[1] is not None
        return self._run(compound.run, first[0].stmt, first[1], execute, params, context, mutes, autocommit,
                         watched)

    def _run(self, path: Callable[..., Any], stmt: Any, info: TableInfo, execute: Callable[..., Any], params: Any,
             context: dict[str, Any], mutes: tuple[runtime.Mute, ...], own_transaction: bool, *args: Any) -> Any:
        """Run a capture path, guarded, in a transaction of its own if ``own_transaction``."""
        if own_transaction:
            return self.in_raw_transaction(
                lambda: self._guarded(path, stmt, info, execute, params, context, mutes, True, *args), context,
                with_statement=True)
        return self._guarded(path, stmt, info, execute, params, context, mutes, False, *args)

    def _guarded(self, path: Callable[..., Any], stmt: Any, info: TableInfo, execute: Callable[..., Any],
                 params: Any, context: dict[str, Any], mutes: tuple[runtime.Mute, ...], own: bool, *args: Any) -> Any:
        """Run a capture path so that capture's own failures never fail the write: before the
        statement ran, it runs unchanged and uncaptured; after, Django gets its result. Both
        are logged with the events they lose. The statement's own errors propagate."""
        state: dict[str, Any] = {}

        def run(sql: str, run_params: Any) -> Any:
            state["ran"] = sql
            state["result"] = execute(sql, run_params)
            return state["result"]

        write = Write(stmt, info, params, run, context, mutes, self.connection, self.vendor, self.rows,
                      self.pending, own)
        try:
            result = path(write, *args)
        except Exception as exc:
            self._show(stmt.sql, params, state, context)
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
                self.rows.begin_now()  # not with the statement: the query log shows it as given
                return execute(stmt.sql, params)
            if "result" not in state:
                raise  # the statement itself failed
            logger.exception("dbevents: the events of a %s on %s (%r) are lost: its rows could not be read",
                             stmt.keyword.upper(), label, alias)
            result = state["result"]
        self._show(stmt.sql, params, state, context)
        return result

    def _show(self, sql: str, params: Any, state: dict[str, Any], context: dict[str, Any]) -> None:
        """When capture changed the statement (or sent its transaction's BEGIN with it), Django's
        query log shows it as it was given."""
        if state.get("ran", sql) == sql and not self.vendor.began_with_statement:
            return
        wrapper = context["cursor"]
        if not isinstance(wrapper.cursor, ReplayCursor):
            replay(wrapper, wrapper.cursor, None, None)
        wrapper.cursor.shown = (sql, params)

    def _operational(self, exc: BaseException) -> bool:
        from django.db import OperationalError

        return isinstance(exc, (OperationalError, self.connection.Database.OperationalError))  # type: ignore[attr-defined]

    def capture_executemany(self, info: TableInfo | None, mutes: tuple[runtime.Mute, ...], raw: Any, sql: str,
                            param_list: Any, context: dict[str, Any]) -> Any:
        """``executemany()`` of a write to a watched table (see :func:`batch.executemany`)."""
        return batch.executemany(self, info, mutes, raw, sql, list(param_list), context)

    # ------------------------------------------------------------------ transactions of capture's own

    def in_raw_transaction(self, run: Callable[[], Any], context: dict[str, Any], *,
                           with_statement: bool = False) -> Any:
        """Run an autocommit statement in a transaction of the driver's own, invisible to
        Django's transaction state and query log, and commit it with its events (and their
        outbox rows); publish them after the COMMIT. ``with_statement``: ``run`` goes through
        the capture paths, which may send the BEGIN with the statement."""
        raw = self.connection.connection
        with self.connection.wrap_database_errors:
            self.vendor.begin(raw, with_statement=with_statement)
        try:
            result = run()
            if self.vendor.reads_rows_before_commit:
                buffer_result(context)
            committed = self.prepare_commit(commit_with_outbox=True)
            with self.connection.wrap_database_errors:
                raw.commit()  # nothing left to do when the outbox INSERT committed already
        except CommitError as failed:
            self.discard()
            raise failed.error from None  # the application's error, as its statement raises it
        except BaseException:
            self.discard()
            with self.connection.wrap_database_errors:
                raw.rollback()
            raise
        finally:
            with self.connection.wrap_database_errors:
                self.vendor.end(raw)
        publisher.publish(committed)
        return result

    # ------------------------------------------------------------------ the transaction's events

    def prepare(self, *, peek: bool = False, after: int = 0) -> list[Event]:
        """This transaction's events (see :func:`commit.prepare`)."""
        return commit.prepare(self.pending, self.connection.alias, peek=peek, after=after)

    def prepare_commit(self, *, commit_with_outbox: bool = False) -> Committed:
        """The transaction's events before its COMMIT (see :func:`commit.prepare_commit`)."""
        return commit.prepare_commit(self.pending, self.vendor, self.rows, commit=commit_with_outbox)

    def flush_committed(self) -> None:
        """Publish the events of statements that are already committed (autocommit)."""
        publisher.publish(Committed(self.prepare(), self.connection.alias))

    def discard(self) -> None:
        self.pending.discard()

    # ------------------------------------------------------------------ what capture cannot follow

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

    def _own_schema(self) -> str | None:
        """The schema unqualified names resolve to (MySQL: the current database), read once
        per driver connection."""
        raw = self.connection.connection
        cached = self._schema
        if cached is not None and cached[0] is raw:
            return cached[1]
        query = self.vendor.own_schema_query
        name = str(self.rows.query(query, None)[0][0] or "").lower() if query else "main"
        self._schema = (raw, name)
        return name


class DriverProxy:
    """Stands in for the driver cursor while a write to a registered table passes the inner
    execute wrappers: the statement reaches capture where it reaches the driver, as the
    wrappers passed it on. Anything else goes to the driver cursor."""

    def __init__(self, capture: ConnectionCapture, wrapper: Any, raw: Any, watched: Watched,
                 context: dict[str, Any]) -> None:
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
                                             self._capture.autocommit())

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


def _keys_given(stmt: Any, info: TableInfo, params: Any) -> bool:
    """Whether an upsert or REPLACE names its rows' keys (MariaDB then runs it as written)."""
    return stmt.kind == "insert" and (stmt.upsert or stmt.replace) and given_keys(stmt, info, params) is not None
