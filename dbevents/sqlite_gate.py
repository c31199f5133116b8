"""SQLite: the publisher thread's outbox writes never overlap the application's statements or
transactions in the same process.

SQLite has one writer at a time, and a connection that read inside a transaction and then
writes gets ``database is locked`` at once -- without waiting -- if another connection holds the
write lock at that moment (in-memory shared-cache databases fail even plain writes that way).
The stock engine never meets this within a process unless the application writes from two
threads; dbevents' publisher thread marking outbox rows would. So the publisher writes only
when no SQLite connection of the process is running a statement, has a cursor open (it may
still be handing out a SELECT's rows, holding a read snapshot) or holds a transaction open, and
a statement that starts while it writes waits for it (milliseconds).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_cond = threading.Condition()
_members: weakref.WeakSet[Any] = weakref.WeakSet()
#: Set by the publisher thread while it writes; read without the lock on every statement.
writing = False
_writer: int | None = None  # the thread that holds the gate


def _after_fork() -> None:
    # The publisher thread that held the gate does not exist in the child.
    global _cond, writing, _writer
    _cond = threading.Condition()
    writing, _writer = False, None


os.register_at_fork(after_in_child=_after_fork)


def register(connection: Any) -> None:
    """Take part in the gate: ``connection`` is an application connection to SQLite, whose
    ``dbevents_executing`` count its execute wrapper keeps (see :func:`enter`)."""
    connection.dbevents_executing = 0
    connection.dbevents_cursors = weakref.WeakSet()
    _members.add(connection)


def opened(connection: Any, cursor: Any) -> None:
    """A cursor of ``connection`` is open: it may hold a read snapshot until it is closed (or
    garbage)."""
    cursors = getattr(connection, "dbevents_cursors", None)
    if cursors is not None:
        cursors.add(cursor)
        cursor.dbevents_owner = weakref.ref(connection)


def closed(cursor: Any) -> None:
    """The cursor was closed: it holds nothing any more."""
    owner = getattr(cursor, "dbevents_owner", None)
    connection = owner() if owner is not None else None
    if connection is not None:
        connection.dbevents_cursors.discard(cursor)


def enter(connection: Any) -> None:
    """Before a statement on ``connection``: wait while the publisher writes."""
    connection.dbevents_executing += 1
    # The publisher sets ``writing`` and then looks at every connection's count; this side
    # counts and then looks at ``writing``: one of the two always sees the other.
    if writing and connection.dbevents_executing == 1 and _writer != connection._thread_ident:
        connection.dbevents_executing = 0
        with _cond:
            while writing:
                _cond.wait()
            connection.dbevents_executing = 1


def leave(connection: Any) -> None:
    connection.dbevents_executing -= 1


def _busy(connection: Any, me: int) -> bool:
    if getattr(connection, "_thread_ident", None) == me:
        return False
    if connection.dbevents_executing or len(connection.dbevents_cursors):
        return True
    raw = connection.connection
    try:
        return raw is not None and raw.in_transaction
    except Exception:  # closed by its thread meanwhile: it holds nothing
        return False


@contextmanager
def exclusive(timeout: float) -> Iterator[None]:
    """Hold the gate for a write by the publisher thread: wait (up to ``timeout`` seconds, then
    go ahead) until no other connection of the process runs a statement or a transaction."""
    global writing, _writer
    me = threading.get_ident()
    deadline = time.monotonic() + timeout
    try:
        while True:
            with _cond:
                writing, _writer = True, me
                if time.monotonic() >= deadline or not any(_busy(c, me) for c in list(_members)):
                    break
                writing = False
                _cond.notify_all()
            time.sleep(0.002)
        yield
    finally:
        with _cond:
            writing, _writer = False, None
            _cond.notify_all()
