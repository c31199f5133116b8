"""What capture asks of a database, answered once per vendor (as Django's ``features_class`` and
``ops_class`` answer it for the ORM): no other capture module asks ``connection.vendor``."""

from __future__ import annotations

from typing import Any

from dbevents.sql import Statement


class Vendor:
    """The answers every database shares; a subclass per vendor overrides what differs."""

    name = ""                      # Django's ``connection.vendor``: the SQL dialect for dbevents.sql
    gated = False                  # statements coordinate with the publisher thread (dbevents.sqlite_gate)
    upsert_xmax = False            # an upsert's RETURNING tells new rows by ``xmax = 0``
    own_schema_query: str | None = None  # what unqualified table names resolve to
    commit_guard = False           # a failed query aborts the transaction: prepare COMMIT behind a savepoint
    locks_in_own_transaction = False  # autocommit UPDATE/DELETE without RETURNING: lock in a transaction
    rebuilds_insert_result = False    # RETURNING hides the driver's insert id and upsert row count
    collects_lastrowid = False     # executemany() must rebuild the batch's lastrowid
    # The driver refuses to COMMIT while a statement still has rows to hand out (a RETURNING
    # that capture did not consume, because it ran the statement uncaptured): read them first.
    reads_rows_before_commit = False
    requires_returning = False     # capture has no other path here: RETURNING is required
    claims_by_locking = False      # the relay claims outbox rows with SELECT ... FOR UPDATE (no SKIP LOCKED)

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def uses_returning(self, stmt: Statement, keys_given: bool) -> bool:
        """Whether capture appends RETURNING to this statement (else: lock and read)."""
        return bool(self.connection.features.can_return_columns_from_insert)

    def returning_ref(self, ref: str) -> str:
        """How capture's RETURNING columns name the target (``ref`` unqualified)."""
        return f"{ref}."

    def executemany_atomic(self, inserting: bool) -> bool:
        """Whether the driver's own ``executemany()`` is all-or-nothing."""
        return False

    def executemany_result(self, total: int, raw: Any) -> Any:
        """What the driver's ``executemany()`` returns."""
        return None

    def batch_returns(self) -> bool:
        """Whether the driver returns the rows of each statement of an ``executemany()``."""
        return False

    def inserts_arrays(self) -> bool:
        """Whether the outbox INSERT can pass one array per column (and get the ids back)."""
        return False

    #: Run first in the transaction that marks outbox rows sent: a mark lost in a crash only
    #: makes the relay publish the event again (at-least-once allows it), so its COMMIT need
    #: not wait for the disk.
    relaxed_commit: str | None = None

    #: Set by :meth:`begin` where the BEGIN goes out with the transaction's first statement;
    #: ``began_with_statement`` once capture sent it in front of the statement.
    begin_pending = False
    began_with_statement = False

    def begin(self, raw: Any, *, with_statement: bool = False) -> None:
        """Start a transaction of the driver's own on an autocommit connection (``with_statement``:
        it may begin with the next statement capture runs, see :meth:`take_begin`)."""
        raw.autocommit = False

    def end(self, raw: Any) -> None:
        """Back to autocommit after :meth:`begin` (committed or rolled back)."""
        self.begin_pending = self.began_with_statement = False
        raw.autocommit = True

    def take_begin(self) -> str:
        """What to put before the transaction's first statement: ``"BEGIN; "`` while the BEGIN
        is pending (then it is no longer), else nothing."""
        if not self.begin_pending:
            return ""
        self.begin_pending = False
        return "BEGIN; "

    def transaction_failed(self) -> bool:
        """Whether the current transaction is aborted (only asked where :attr:`commit_guard`)."""
        return False

    def rowcount_while_unread(self) -> int | None:
        """A statement's rowcount while its RETURNING rows are not all read (None: the driver's)."""
        return None

    def no_result(self, raw: Any, empty: Any) -> Any:
        """The driver's answer to ``fetch*()`` after a statement without a result set."""
        return empty


class PostgreSQL(Vendor):
    name = "postgresql"
    relaxed_commit = "SET LOCAL synchronous_commit TO OFF"
    upsert_xmax = True
    own_schema_query = "SELECT current_schema()"
    commit_guard = True

    def executemany_atomic(self, inserting: bool) -> bool:
        return True  # psycopg runs a batch in one transaction

    def batch_returns(self) -> bool:
        return self._psycopg3()

    def inserts_arrays(self) -> bool:
        return self._psycopg3()

    def _psycopg3(self) -> bool:
        return getattr(getattr(self.connection, "Database", None), "__name__", "") == "psycopg"

    def begin(self, raw: Any, *, with_statement: bool = False) -> None:
        # psycopg 3 binding client-side (Django's default) sends a statement as a simple query,
        # which may hold several: the BEGIN goes with the first one, saving a round trip.
        # Otherwise psycopg sends it on its own before the first statement.
        import psycopg

        if with_statement and self._psycopg3() and issubclass(raw.cursor_factory, psycopg.ClientCursor):
            self.begin_pending = True
        else:
            raw.autocommit = False

    def transaction_failed(self) -> bool:
        raw = self.connection.connection
        info = getattr(raw, "info", None)  # psycopg 3; psycopg2 has get_transaction_status()
        status = info.transaction_status if info is not None else raw.get_transaction_status()
        return int(status) == 3  # libpq's PQTRANS_INERROR

    def no_result(self, raw: Any, empty: Any) -> Any:
        import psycopg

        status = raw.pgresult.command_status.decode() if raw.pgresult is not None else ""
        raise psycopg.ProgrammingError(f"the last operation didn't produce records (command status: {status})")


class SQLite(Vendor):
    name = "sqlite"
    gated = True
    reads_rows_before_commit = True
    requires_returning = True

    def returning_ref(self, ref: str) -> str:
        return ""  # SQLite's RETURNING sees the target table only and refuses its alias: bare names

    def executemany_result(self, total: int, raw: Any) -> Any:
        return raw

    def begin(self, raw: Any, *, with_statement: bool = False) -> None:
        raw.execute(f"BEGIN {getattr(self.connection, 'transaction_mode', None) or ''}".rstrip())

    def end(self, raw: Any) -> None:
        pass  # sqlite3 leaves a transaction of its own at COMMIT or ROLLBACK

    def rowcount_while_unread(self) -> int | None:
        return 0  # sqlite3 counts the rows of a statement with RETURNING once all were read


class MySQL(Vendor):
    """MySQL and MariaDB."""

    name = "mysql"
    own_schema_query = "SELECT DATABASE()"
    claims_by_locking = True
    locks_in_own_transaction = True
    rebuilds_insert_result = True
    collects_lastrowid = True

    def uses_returning(self, stmt: Statement, keys_given: bool) -> bool:
        # MariaDB 10.5+ has RETURNING on INSERT and single-table DELETE; MySQL has none. Asked
        # per statement: the server is known once the connection is open.
        if not getattr(self.connection, "mysql_is_mariadb", False) or not super().uses_returning(stmt, keys_given):
            return False
        if stmt.kind == "insert" and (stmt.upsert or stmt.replace):
            # Its row count and insert id (2 per updated row, 1 per unchanged one ...) cannot be
            # rebuilt from RETURNING rows: run it as written when its own values name its keys.
            return not keys_given
        return stmt.kind == "insert" or (stmt.kind == "delete" and not stmt.multi_table_delete)

    def executemany_atomic(self, inserting: bool) -> bool:
        return inserting  # MySQLdb turns INSERT ... VALUES into one multi-row statement

    def executemany_result(self, total: int, raw: Any) -> Any:
        return total

    def begin(self, raw: Any, *, with_statement: bool = False) -> None:
        # One round trip, and none to end it: the COMMIT or ROLLBACK returns to autocommit.
        raw.query("START TRANSACTION")

    def end(self, raw: Any) -> None:
        pass

    def no_result(self, raw: Any, empty: Any) -> Any:
        return () if empty == [] else empty


def vendor_for(connection: Any) -> Vendor:
    """The :class:`Vendor` of a ``DatabaseWrapper``."""
    return {"postgresql": PostgreSQL, "sqlite": SQLite, "mysql": MySQL}.get(connection.vendor, Vendor)(connection)
