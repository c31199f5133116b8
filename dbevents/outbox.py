"""The transactional outbox: the rows of ``dbevents_outbox`` and everything done with them.

* :func:`store` -- in the data's transaction, just before COMMIT: one multi-row INSERT per
  chunk, on a bare driver cursor (no execute wrappers, not in ``connection.queries``). The rows
  are leased to the committing process, which publishes them right after COMMIT (fast path).
* :func:`mark_published` -- after the broker confirmed (or returned) them: ``sent_at`` is set.
* who publishes a row (leases, claims by relays, releases) is :mod:`dbevents.leases`.
* :func:`held_back` -- the committing process leaves an event to the relay when an earlier event
  of the same row is still unsent, so one row's events are published in commit order.
* :func:`cleanup` -- retention (what ``dbevents_status`` reads is in :mod:`dbevents.status`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone

from dbevents import conf, outbox_sql, owners, sqlite_gate
from dbevents.events import HEADER_EVENT_ID, HEADER_ORDINAL, HEADER_TRANSACTION_ID, Message, headers_json

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("dbevents")

TABLE = outbox_sql.TABLE
UNROUTABLE = "unroutable: "
DEAD = "cannot be encoded: "


def store(connection: BaseDatabaseWrapper, messages: list[Message], dead: Sequence[tuple[Message, str]] = (),
          *, savepoint: str | None = None, commit: bool = False) -> list[Message]:
    """Write ``messages`` to the outbox inside the current transaction of ``connection``, leased to
    this process, and return them with their outbox ids; ``dead`` ones (message, why) are written
    dead, never to be published. ``savepoint`` is created first, and with ``commit`` the
    transaction may be committed with the rows (see :func:`dbevents.outbox_sql.insert`). Raises
    on failure (the caller falls back and logs; :class:`~dbevents.outbox_sql.CommitError` is
    the transaction's own failure)."""
    if not messages and not dead:
        return []
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    created = adapt(now)
    available = adapt(now + timedelta(seconds=float(conf.get("DBEVENTS_OUTBOX_LEASE"))))
    owner = owners.process_owner()
    rows = [
        (m.headers[HEADER_EVENT_ID], m.headers[HEADER_TRANSACTION_ID], m.headers[HEADER_ORDINAL], m.service_name,
         m.routing_key, m.body, m.content_type, m.content_encoding, headers_json(m.headers), created, available,
         owner, 0, "", m.key, None)
        for m in messages
    ] + [
        (m.headers[HEADER_EVENT_ID], m.headers[HEADER_TRANSACTION_ID], m.headers[HEADER_ORDINAL], m.service_name,
         m.routing_key, m.body, m.content_type, m.content_encoding, headers_json(m.headers), created, None,
         None, 0, f"{DEAD}{why}"[:2000], m.key, created)
        for m, why in dead
    ]
    messages = [*messages, *(m for m, _ in dead)]
    ids = outbox_sql.insert(connection, rows, arrays=vendor_of(connection).inserts_arrays(),
                            savepoint=savepoint, commit=commit)
    if len(ids) != len(messages):
        raise RuntimeError(f"the outbox INSERT returned {len(ids)} ids for {len(messages)} rows")
    alias = connection.alias
    return [m.stored(i, alias) for m, i in zip(messages, ids, strict=True)]


def holds_connections() -> bool:
    """Whether this thread has a database connection open (the publisher thread's, after
    marking outbox rows)."""
    return any(conn.connection is not None for conn in connections.all(initialized_only=True))


def close_connections() -> None:
    """Close this thread's database connections."""
    for conn in connections.all(initialized_only=True):
        conn.close()


def outbox_model() -> Any:
    from dbevents.models import OutboxMessage

    return OutboxMessage


def chunks(ids: Sequence[int], size: int = 1000) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def by_alias(messages: Sequence[Message]) -> dict[str, list[int]]:
    """The outbox ids of ``messages`` per database (messages not in an outbox are skipped)."""
    by_alias: dict[str, list[int]] = {}
    for m in messages:
        if m.outbox_id is not None and m.alias is not None:
            by_alias.setdefault(m.alias, []).append(m.outbox_id)
    return by_alias


def mark_published(done: Sequence[Message], returned: Sequence[tuple[Message, str]]) -> None:
    """Set ``sent_at`` on the outbox rows of confirmed (and of returned, unroutable) messages,
    per database. A failure is logged: those rows will be published again by the relay."""
    for alias, ids in by_alias(done).items():
        _update(alias, ids, "marking %d published event(s) as sent", sent_at=timezone.now(), lease_owner=None)
    by_reason: dict[str, list[Message]] = {}
    for m, reason in returned:
        by_reason.setdefault(reason, []).append(m)
    for reason, messages in by_reason.items():
        for alias, ids in by_alias(messages).items():
            _update(alias, ids, "recording %d unroutable event(s)", sent_at=timezone.now(), lease_owner=None,
                    last_error=(UNROUTABLE + reason)[:2000])


def _update(alias: str, ids: list[int], what: str, **values: Any) -> None:
    model = outbox_model()

    def mark() -> None:
        connection = connections[alias]
        with transaction.atomic(using=alias):   # one COMMIT for every chunk
            relaxed = vendor_of(connection).relaxed_commit
            if relaxed:
                with connection.cursor() as cursor:
                    cursor.execute(relaxed)
            for chunk in chunks(ids):
                model.objects.using(alias).filter(pk__in=chunk).update(**values)

    try:
        retrying(alias, mark)
    except Exception as exc:
        logger.warning(
            "dbevents: %s in the outbox of %r failed (%s: %s); dbevents_relay will publish them "
            "again (duplicates), outbox ids %s", what % len(ids), alias, type(exc).__name__, exc, id_list(ids),
        )


def retrying(alias: str, work: Callable[[], Any], attempts: int = 5) -> Any:
    """Run ``work`` on the publisher's own connection, again after a short pause if the database
    was busy (SQLite answers "database table is locked" at once while a writer commits)."""
    from django.db import DatabaseError

    gated = vendor_of(connections[alias]).gated
    for attempt in range(1, attempts + 1):
        try:
            with _internal(connections[alias]):
                if not gated:
                    return work()
                with sqlite_gate.exclusive(float(conf.get("DBEVENTS_OUTBOX_LEASE")) / 2):
                    return work()
        except DatabaseError:
            if attempt == attempts:
                raise
            connections[alias].close()
            time.sleep(0.02 * 2 ** attempt)


@contextmanager
def _internal(connection: Any) -> Iterator[None]:
    """dbevents' own queries stay out of the ``django.db.backends`` log the application reads
    (DEBUG=True, CaptureQueriesContext) while the block runs."""
    capture = getattr(connection, "dbevents", None)
    if capture is None:
        yield
        return
    before, capture.internal = capture.internal, True
    try:
        yield
    finally:
        capture.internal = before


def id_list(ids: Sequence[int]) -> str:
    return f"{list(ids[:50])}{'...' if len(ids) > 50 else ''}"


def unsent() -> Q:
    """Rows still to publish: neither sent nor dead."""
    return Q(sent_at__isnull=True, dead_at__isnull=True)


MESSAGE_FIELDS = ("id", "service_name", "routing_key", "body", "content_type", "content_encoding", "headers")


def held_back(messages: Sequence[Message]) -> list[Message]:
    """The outbox messages of ``messages`` whose row has an earlier event still unsent that is
    not among ``messages`` (left to the relay after a failure, or another process's): publishing
    them now would overtake it. Usually one query per database: the unsent rows before the first
    of ``messages`` when they are few (else one query per 500 keys), and those between them when
    their ids have gaps."""
    out: list[Message] = []
    by_alias: dict[str, list[Message]] = {}
    for m in messages:
        if m.outbox_id is not None and m.alias is not None:
            by_alias.setdefault(m.alias, []).append(m)
    for alias, group in by_alias.items():
        ids = {m.outbox_id for m in group if m.outbox_id is not None}
        earliest = retrying(alias, functools.partial(_unsent_before, alias, ids, max(ids)))
        if earliest is None:  # a backlog: ask per key
            earliest = retrying(alias, functools.partial(_earliest_unsent, alias, group, ids, max(ids)))
        out += [m for m in group if m.outbox_id is not None and earliest.get(m.key, m.outbox_id) < m.outbox_id]
    return out


#: How many unsent rows before a batch's own :func:`held_back` reads at once.
_FOREIGN_ROWS = 1000


def _unsent_before(alias: str, ours: set[int], last: int) -> dict[str, int] | None:
    """Per row key: the earliest unsent event up to ``last`` that is not ours -- other
    processes' rows may lie between ours (a transaction written in chunks) -- or None when more
    than :data:`_FOREIGN_ROWS` unsent rows come before ours (a backlog)."""
    manager = outbox_model().objects.using(alias).filter(unsent())
    first = min(ours)
    rows = list(manager.filter(id__lt=first).order_by("id").values_list("id", "event_key")[:_FOREIGN_ROWS])
    if len(rows) == _FOREIGN_ROWS:
        return None
    if len(ours) < last - first + 1:  # gaps between our ids: rows of others may fill them
        rows += manager.filter(id__gt=first, id__lt=last).values_list("id", "event_key")
    earliest: dict[str, int] = {}
    for i, key in sorted(rows):
        if i not in ours and key and key not in earliest:
            earliest[key] = i
    return earliest


def _earliest_unsent(alias: str, group: Sequence[Message], ours: set[int], last: int) -> dict[str, int]:
    """Per row key of ``group``: the id of its earliest unsent event before ``last`` that is not ours."""
    model = outbox_model()
    keys = sorted({m.key for m in group})
    earliest: dict[str, int] = {}
    for start in range(0, len(keys), 500):
        rows = (model.objects.using(alias).filter(unsent(), event_key__in=keys[start:start + 500], id__lt=last)
                .values_list("event_key", "id"))
        for key, i in rows:
            if i not in ours and i < earliest.get(key, last + 1):
                earliest[key] = i
    return earliest


def message_of(row: tuple[Any, ...], alias: str) -> Message:
    """The message of an outbox row read as :data:`MESSAGE_FIELDS`."""
    pk, service, routing_key, body, content_type, content_encoding, headers = row
    return Message(service, routing_key, bytes(body), content_type, content_encoding, json.loads(headers), pk, alias)


def cleanup(alias: str, retention: float | None = None) -> int:
    """Delete rows sent more than ``retention`` seconds ago (default
    ``DBEVENTS_OUTBOX_RETENTION``; None keeps them); returns how many. Deletes in chunks so no
    statement holds locks for long."""
    retention = conf.get("DBEVENTS_OUTBOX_RETENTION") if retention is None else retention
    if retention is None:
        return 0
    manager = outbox_model().objects.using(alias)
    cutoff = timezone.now() - timedelta(seconds=float(retention))
    total = 0
    while True:
        ids = list(manager.filter(sent_at__lt=cutoff).order_by("sent_at", "id").values_list("id", flat=True)[:5000])
        if not ids:
            return total
        total += manager.filter(pk__in=ids).delete()[0]


def vendor_of(connection: Any) -> Any:
    """What capture knows of the database behind ``connection`` (``dbevents.capture.vendors``)."""
    return connection.dbevents.vendor
