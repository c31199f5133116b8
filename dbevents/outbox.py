"""The transactional outbox: the rows of ``dbevents_outbox`` and everything done with them.

* :func:`store` -- in the data's transaction, just before COMMIT: one multi-row INSERT per
  chunk, on a bare driver cursor (no execute wrappers, not in ``connection.queries``). The rows
  are leased to the committing process, which publishes them right after COMMIT (fast path).
* :func:`mark_published` -- after the broker confirmed (or returned) them: ``sent_at`` is set.
* :func:`claim` / :func:`release` -- ``dbevents_relay``: take available rows in ``id`` order
  (``FOR UPDATE SKIP LOCKED`` where the database has it; one atomic UPDATE elsewhere), lease
  them, publish, then mark them sent or schedule their next attempt with back-off. Unsent rows
  never expire.
* :func:`cleanup` and :func:`stats` -- retention and ``dbevents_status``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from dbevents import conf, sqlite_gate
from dbevents.events import HEADER_EVENT_ID, HEADER_ORDINAL, HEADER_TRANSACTION_ID, Message, headers_json

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("dbevents")

TABLE = "dbevents_outbox"
_COLUMNS = ("event_id", "transaction_id", "ordinal", "service_name", "routing_key", "body", "content_type",
            "content_encoding", "headers", "created_at", "available_at", "lease_owner", "attempts", "last_error")
UNROUTABLE = "unroutable: "


def process_owner() -> str:
    """The lease owner written on the rows this process commits: ``commit:<host>:<pid>``."""
    return f"commit:{socket.gethostname()}:{os.getpid()}"[:100]


def store(connection: BaseDatabaseWrapper, messages: list[Message]) -> list[Message]:
    """Write ``messages`` to the outbox inside the current transaction of ``connection`` and
    return them with their outbox ids. Raises on failure (the caller falls back and logs)."""
    if not messages:
        return []
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    created = adapt(now)
    available = adapt(now + timedelta(seconds=float(conf.get("DBEVENTS_OUTBOX_LEASE"))))
    owner = process_owner()
    rows = [
        (m.headers[HEADER_EVENT_ID], m.headers[HEADER_TRANSACTION_ID], m.headers[HEADER_ORDINAL], m.service_name,
         m.routing_key, m.body, m.content_type, m.content_encoding, headers_json(m.headers), created, available,
         owner, 0, "")
        for m in messages
    ]
    if _vendor(connection).inserts_arrays():
        ids = _insert_postgresql(connection, rows)
    else:
        ids = _insert(connection, rows)
    if len(ids) != len(messages):
        raise RuntimeError(f"the outbox INSERT returned {len(ids)} ids for {len(messages)} rows")
    alias = connection.alias
    return [replace(m, outbox_id=i, alias=alias) for m, i in zip(messages, ids, strict=True)]


def _insert(connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]]) -> list[int]:
    """Multi-row INSERTs on a bare driver cursor; the new ids in row order."""
    qn = connection.ops.quote_name
    width = len(_COLUMNS)
    per_chunk = max(1, min(500, (connection.features.max_query_params or 30_000) // width))
    returning = connection.features.can_return_rows_from_bulk_insert
    head = f"INSERT INTO {qn(TABLE)} ({', '.join(qn(c) for c in _COLUMNS)}) VALUES "
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
             "timestamptz", "text", "integer", "text")
_PG_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%b::{t}[]" for t in _PG_TYPES) + ") RETURNING id, event_id"
)


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


def _model() -> Any:
    from dbevents.models import OutboxMessage

    return OutboxMessage


def _chunks(ids: Sequence[int], size: int = 1000) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def _by_alias(messages: Sequence[Message]) -> dict[str, list[int]]:
    """The outbox ids of ``messages`` per database (messages not in an outbox are skipped)."""
    by_alias: dict[str, list[int]] = {}
    for m in messages:
        if m.outbox_id is not None and m.alias is not None:
            by_alias.setdefault(m.alias, []).append(m.outbox_id)
    return by_alias


def mark_published(done: Sequence[Message], returned: Sequence[tuple[Message, str]]) -> None:
    """Set ``sent_at`` on the outbox rows of confirmed (and of returned, unroutable) messages,
    per database. A failure is logged: those rows will be published again by the relay."""
    for alias, ids in _by_alias(done).items():
        _update(alias, ids, "marking %d published event(s) as sent", sent_at=timezone.now(), lease_owner=None)
    by_reason: dict[str, list[Message]] = {}
    for m, reason in returned:
        by_reason.setdefault(reason, []).append(m)
    for reason, messages in by_reason.items():
        for alias, ids in _by_alias(messages).items():
            _update(alias, ids, "recording %d unroutable event(s)", sent_at=timezone.now(), lease_owner=None,
                    last_error=(UNROUTABLE + reason)[:2000])


def _update(alias: str, ids: list[int], what: str, **values: Any) -> None:
    model = _model()
    try:
        _retrying(alias, lambda: [model.objects.using(alias).filter(pk__in=chunk).update(**values)
                                  for chunk in _chunks(ids)])
    except Exception as exc:
        logger.warning(
            "dbevents: %s in the outbox of %r failed (%s: %s); dbevents_relay will publish them "
            "again (duplicates), outbox ids %s", what % len(ids), alias, type(exc).__name__, exc, _id_list(ids),
        )


def _retrying(alias: str, work: Callable[[], Any], attempts: int = 5) -> Any:
    """Run ``work`` on the publisher's own connection, again after a short pause if the database
    was busy (SQLite answers "database table is locked" at once while a writer commits)."""
    from django.db import DatabaseError

    gated = _vendor(connections[alias]).gated
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


def _id_list(ids: Sequence[int]) -> str:
    return f"{list(ids[:50])}{'...' if len(ids) > 50 else ''}"


def claim(alias: str, owner: str, limit: int) -> list[Message]:
    """Lease up to ``limit`` available rows of ``alias``'s outbox to ``owner`` (for
    ``DBEVENTS_OUTBOX_LEASE`` seconds) and return them in ``id`` order.

    Concurrent relays never get the same row: on PostgreSQL and MariaDB 10.6+ the candidates are
    locked with ``SKIP LOCKED`` (others take the next rows instead of waiting); elsewhere the
    lease is one conditional UPDATE, which the database serializes.
    """
    model = _model()
    now = timezone.now()
    until = now + timedelta(seconds=float(conf.get("DBEVENTS_OUTBOX_LEASE")))
    token = f"{owner}:{uuid.uuid4().hex[:8]}"[-100:]
    manager = model.objects.using(alias)
    available = Q(sent_at__isnull=True) & (Q(available_at__isnull=True) | Q(available_at__lte=now))
    connection = connections[alias]
    with transaction.atomic(using=alias):
        if connection.features.has_select_for_update_skip_locked:
            ids = list(manager.filter(available).order_by("id").select_for_update(skip_locked=True)
                       .values_list("id", flat=True)[:limit])
            if not ids:
                return []
            manager.filter(pk__in=ids).update(lease_owner=token, available_at=until)
        elif _vendor(connection).claims_by_locking:
            ids = list(manager.filter(available).order_by("id").select_for_update()
                       .values_list("id", flat=True)[:limit])
            if not ids:
                return []
            manager.filter(pk__in=ids).filter(available).update(lease_owner=token, available_at=until)
        else:
            candidates = manager.filter(available).order_by("id").values("id")[:limit]
            if not manager.filter(pk__in=candidates).update(lease_owner=token, available_at=until):
                return []
        rows = list(manager.filter(lease_owner=token, sent_at__isnull=True).order_by("id"))
    return [_message(row, alias) for row in rows]


def _message(row: Any, alias: str) -> Message:
    return Message(row.service_name, row.routing_key, bytes(row.body), row.content_type, row.content_encoding,
                   json.loads(row.headers), row.id, alias)


def release(messages: Sequence[Message], error: str) -> None:
    """Give claimed rows that could not be published back, with their next attempt scheduled
    after an exponential back-off (``DBEVENTS_PUBLISH_RETRY_DELAY`` doubled per attempt, capped at
    ``DBEVENTS_PUBLISH_RETRY_MAX_DELAY``). Nothing expires: a row is retried until it is sent."""
    from django.db.models import F

    model = _model()
    for alias, ids in _by_alias(messages).items():
        manager = model.objects.using(alias)

        def give_back(manager: Any = manager, ids: list[int] = ids) -> None:
            attempts = dict(manager.filter(pk__in=ids).values_list("id", "attempts"))
            by_attempts: dict[int, list[int]] = {}
            for i, n in attempts.items():
                by_attempts.setdefault(n, []).append(i)
            now = timezone.now()
            for n, group in by_attempts.items():
                wait = min(float(conf.get("DBEVENTS_PUBLISH_RETRY_DELAY")) * 2 ** n,
                           float(conf.get("DBEVENTS_PUBLISH_RETRY_MAX_DELAY")))
                manager.filter(pk__in=group).update(
                    attempts=F("attempts") + 1, last_error=error[:2000], lease_owner=None,
                    available_at=now + timedelta(seconds=wait),
                )

        _retrying(alias, give_back)


def release_owner(alias: str, owner: str) -> int:
    """Make the rows still leased by ``owner`` (a relay restarted under the same worker id)
    available again at once; returns how many."""
    return int(_model().objects.using(alias).filter(sent_at__isnull=True, lease_owner__startswith=f"{owner}:")
               .update(lease_owner=None, available_at=None))


def cleanup(alias: str, retention: float | None = None) -> int:
    """Delete rows sent more than ``retention`` seconds ago (default
    ``DBEVENTS_OUTBOX_RETENTION``; None keeps them); returns how many. Deletes in chunks so no
    statement holds locks for long."""
    retention = conf.get("DBEVENTS_OUTBOX_RETENTION") if retention is None else retention
    if retention is None:
        return 0
    manager = _model().objects.using(alias)
    cutoff = timezone.now() - timedelta(seconds=float(retention))
    total = 0
    while True:
        ids = list(manager.filter(sent_at__lt=cutoff).order_by("sent_at", "id").values_list("id", flat=True)[:5000])
        if not ids:
            return total
        total += manager.filter(pk__in=ids).delete()[0]


def stats(alias: str) -> dict[str, Any]:
    """What ``dbevents_status`` shows for one database (two queries)."""
    manager = _model().objects.using(alias)
    now = timezone.now()
    pending = Q(sent_at__isnull=True)
    failing = pending & Q(attempts__gt=0)
    sent = Q(sent_at__isnull=False)
    counts = manager.aggregate(
        pending=Count("id", filter=pending),
        oldest=Min("created_at", filter=pending),
        leased=Count("id", filter=pending & Q(available_at__gt=now, lease_owner__isnull=False)),
        retrying=Count("id", filter=failing),
        max_attempts=Max("attempts", filter=failing),
        unroutable=Count("id", filter=sent & Q(last_error__startswith=UNROUTABLE)),
        sent=Count("id", filter=sent),
    )
    oldest: datetime | None = counts.pop("oldest")
    last = manager.filter(failing).order_by("-id").values_list("last_error", flat=True).first()
    return {
        "alias": alias,
        "pending": counts["pending"],
        "oldest_pending_age": (now - oldest).total_seconds() if oldest else None,
        "leased": counts["leased"],
        "retrying": counts["retrying"],
        "max_attempts": counts["max_attempts"] or 0,
        "last_error": last or "",
        "unroutable": counts["unroutable"],
        "sent": counts["sent"],
    }


def _vendor(connection: Any) -> Any:
    """What capture knows of the database behind ``connection`` (``dbevents.capture.vendors``)."""
    return connection.dbevents.vendor
