"""The transactional outbox: the rows of ``dbevents_outbox`` and everything done with them.

* :func:`store` -- in the data's transaction, just before COMMIT: one multi-row INSERT per
  chunk, on a bare driver cursor (no execute wrappers, not in ``connection.queries``). The rows
  are leased to the committing process, which publishes them right after COMMIT (fast path).
* :func:`mark_published` -- after the broker confirmed (or returned) them: ``sent_at`` is set.
* :func:`claim` / :func:`release` -- ``dbevents_relay``: take available rows in ``id`` order
  (``FOR UPDATE SKIP LOCKED`` where the database has it; one atomic UPDATE elsewhere), lease
  them, publish, then mark them sent or schedule their next attempt with back-off. Unsent rows
  never expire.
* :func:`held_back` -- the committing process leaves an event to the relay when an earlier event
  of the same row is still unsent, so one row's events are published in commit order.
* :func:`cleanup` -- retention (what ``dbevents_status`` reads is in :mod:`dbevents.status`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
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


def store(connection: BaseDatabaseWrapper, messages: list[Message],
          dead: Sequence[tuple[Message, str]] = ()) -> list[Message]:
    """Write ``messages`` to the outbox inside the current transaction of ``connection``, leased to
    this process, and return them with their outbox ids; ``dead`` ones (message, why) are written
    dead, never to be published. Raises on failure (the caller falls back and logs)."""
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
    ids = outbox_sql.insert(connection, rows, arrays=_vendor(connection).inserts_arrays())
    if len(ids) != len(messages):
        raise RuntimeError(f"the outbox INSERT returned {len(ids)} ids for {len(messages)} rows")
    alias = connection.alias
    return [replace(m, outbox_id=i, alias=alias) for m, i in zip(messages, ids, strict=True)]


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
    model = outbox_model()

    def mark() -> None:
        connection = connections[alias]
        with transaction.atomic(using=alias):   # one COMMIT for every chunk
            relaxed = _vendor(connection).relaxed_commit
            if relaxed:
                with connection.cursor() as cursor:
                    cursor.execute(relaxed)
            for chunk in _chunks(ids):
                model.objects.using(alias).filter(pk__in=chunk).update(**values)

    try:
        _retrying(alias, mark)
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


def unsent() -> Q:
    """Rows still to publish: neither sent nor dead."""
    return Q(sent_at__isnull=True, dead_at__isnull=True)


def _first_of_its_row() -> Q:
    """No earlier unsent event of the same row: with any number of relays and the committing
    processes, the events of one row go out in commit order. Safe without locks: a row only
    stops being unsent once the broker confirmed it."""
    from django.db.models import Exists, OuterRef

    earlier = outbox_model().objects.filter(unsent(), event_key=OuterRef("event_key"), id__lt=OuterRef("id"))
    return Q(event_key="") | Q(~Exists(earlier))


def _available(now: datetime) -> Q:
    """Unsent rows neither leased nor in back-off at ``now``."""
    return unsent() & (Q(available_at__isnull=True) | Q(available_at__lte=now))


def _leased_to(owner: str) -> Q:
    """Unsent rows leased to ``owner``: as written at COMMIT, or with a claim's token after it."""
    return Q(sent_at__isnull=True) & (Q(lease_owner=owner) | Q(lease_owner__startswith=f"{owner}:"))


def claimable(alias: str, now: datetime) -> Any:
    """The rows a relay may claim at ``now``, in ``id`` order: unsent, not leased nor in back-off,
    and the first unsent event of their row."""
    return outbox_model().objects.using(alias).filter(_available(now)).filter(_first_of_its_row()).order_by("id")


def claim(alias: str, owner: str, limit: int) -> list[Message]:
    """Lease up to ``limit`` available rows of ``alias``'s outbox to ``owner`` (for
    ``DBEVENTS_OUTBOX_LEASE`` seconds) and return them in ``id`` order. A row is available when no
    earlier event of the same row (``event_key``) is unsent, so per-row order holds.

    Concurrent relays never get the same row: on PostgreSQL and MariaDB 10.6+ the candidates are
    locked with ``SKIP LOCKED`` (others take the next rows instead of waiting); elsewhere the
    lease is one conditional UPDATE, which the database serializes.
    """
    model = outbox_model()
    now = timezone.now()
    until = now + timedelta(seconds=float(conf.get("DBEVENTS_OUTBOX_LEASE")))
    token = f"{owner}:{uuid.uuid4().hex[:8]}"[-100:]
    manager = model.objects.using(alias)
    candidates = claimable(alias, now)
    connection = connections[alias]
    with transaction.atomic(using=alias):
        if connection.features.has_select_for_update_skip_locked:
            # The rows themselves are read with their lock: two statements per batch.
            rows = list(candidates.select_for_update(skip_locked=True).values_list(*_MESSAGE_FIELDS)[:limit])
            if not rows:
                return []
            manager.filter(pk__in=[r[0] for r in rows]).update(lease_owner=token, available_at=until)
            return [_message(row, alias) for row in rows]
        if _vendor(connection).claims_by_locking:
            # Without SKIP LOCKED the lock waits for another relay's claim; what it leased
            # meanwhile no longer matches when the UPDATE looks again.
            ids = list(candidates.select_for_update().values_list("id", flat=True)[:limit])
            if not ids or not manager.filter(pk__in=ids).filter(_available(now)).update(lease_owner=token,
                                                                                  available_at=until):
                return []
        # One statement: the database serializes it against other relays' claims.
        elif not manager.filter(pk__in=candidates.values("id")[:limit]).update(lease_owner=token,
                                                                               available_at=until):
            return []
        rows = list(manager.filter(lease_owner=token, sent_at__isnull=True).order_by("id")
                    .values_list(*_MESSAGE_FIELDS))
    return [_message(row, alias) for row in rows]


_MESSAGE_FIELDS = ("id", "service_name", "routing_key", "body", "content_type", "content_encoding", "headers")


def claims_concurrently(alias: str) -> bool:
    """Whether a relay may claim on ``alias`` from a second thread while it marks on the first
    (not on SQLite, where dbevents' writers take turns: dbevents.sqlite_gate)."""
    return not _vendor(connections[alias]).gated


def held_back(messages: Sequence[Message]) -> list[Message]:
    """The outbox messages of ``messages`` whose row has an earlier event still unsent that is
    not among ``messages`` (left to the relay after a failure, or another process's): publishing
    them now would overtake it. One query per database and 500 keys."""
    out: list[Message] = []
    by_alias: dict[str, list[Message]] = {}
    for m in messages:
        if m.outbox_id is not None and m.alias is not None:
            by_alias.setdefault(m.alias, []).append(m)
    for alias, group in by_alias.items():
        ids = {m.outbox_id for m in group if m.outbox_id is not None}
        if not _retrying(alias, functools.partial(_any_unsent_before, alias, min(ids))):
            continue   # the usual case, no backlog: one indexed look instead of one per 500 keys
        earliest: dict[str, int] = _retrying(alias, functools.partial(_earliest_unsent, alias, group, ids, max(ids)))
        out += [m for m in group if m.outbox_id is not None and earliest.get(m.key, m.outbox_id) < m.outbox_id]
    return out


def _any_unsent_before(alias: str, first: int) -> bool:
    return bool(outbox_model().objects.using(alias).filter(unsent(), id__lt=first).exists())


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


def _message(row: tuple[Any, ...], alias: str) -> Message:
    """The message of an outbox row read as :data:`_MESSAGE_FIELDS`."""
    pk, service, routing_key, body, content_type, content_encoding, headers = row
    return Message(service, routing_key, bytes(body), content_type, content_encoding, json.loads(headers), pk, alias)


def release(messages: Sequence[Message], error: str, *, owner: str, backoff: bool = True) -> None:
    """Give rows that could not be published back, with their next attempt scheduled after an
    exponential back-off (``DBEVENTS_PUBLISH_RETRY_DELAY`` doubled per attempt, capped at
    ``DBEVENTS_PUBLISH_RETRY_MAX_DELAY``). Nothing expires: a row is retried until it is sent.
    Without ``backoff`` (rows not attempted: held back for order, a full queue, an exiting
    process) they are available at once, and ``error`` is not recorded. Only rows still leased
    to ``owner`` (a process or relay name) change: one whose lease ran out and that another
    relay took keeps that relay's lease."""
    from django.db.models import F

    model = outbox_model()
    ours = _leased_to(owner)
    for alias, ids in _by_alias(messages).items():
        leased = model.objects.using(alias).filter(ours)
        if not backoff:
            _retrying(alias, functools.partial(_make_available, leased, ids))
            continue

        def give_back(rows: Any = leased, ids: list[int] = ids) -> None:
            by_attempts: dict[int, list[int]] = {}
            for chunk in _chunks(ids):
                for i, n in rows.filter(pk__in=chunk).values_list("id", "attempts"):
                    by_attempts.setdefault(n, []).append(i)
            now = timezone.now()
            for n, group in by_attempts.items():
                wait = min(float(conf.get("DBEVENTS_PUBLISH_RETRY_DELAY")) * 2 ** n,
                           float(conf.get("DBEVENTS_PUBLISH_RETRY_MAX_DELAY")))
                for chunk in _chunks(group):
                    rows.filter(pk__in=chunk).update(attempts=F("attempts") + 1, last_error=error[:2000],
                                                     lease_owner=None, available_at=now + timedelta(seconds=wait))

        _retrying(alias, give_back)


def _make_available(rows: Any, ids: list[int]) -> None:
    for chunk in _chunks(ids):
        rows.filter(pk__in=chunk).update(lease_owner=None, available_at=None)


def next_due(alias: str) -> float | None:
    """Seconds until the next row in back-off may be claimed on ``alias`` (0: now), or None when
    none waits. Rows queued behind an earlier unsent event of their row do not count: they
    become claimable when that one is sent, not at a time."""
    now = timezone.now()
    due = (outbox_model().objects.using(alias).filter(unsent(), lease_owner__isnull=True, available_at__isnull=False)
           .filter(_first_of_its_row()).order_by("available_at").values_list("available_at", flat=True).first())
    return None if due is None else max(0.0, (due - now).total_seconds())


def release_dead_owners(alias: str, is_dead: Callable[[str], bool]) -> int:
    """Make the rows leased by owners that ``is_dead`` says are gone (a crashed process on this
    host) available at once instead of after their lease; returns how many."""
    manager = outbox_model().objects.using(alias)
    now = timezone.now()
    leased = manager.filter(unsent(), lease_owner__isnull=False, available_at__gt=now)
    owners = [o for o in leased.values_list("lease_owner", flat=True).distinct() if is_dead(o)]
    if not owners:
        return 0
    return int(leased.filter(lease_owner__in=owners).update(lease_owner=None, available_at=None))


def release_owner(alias: str, owner: str) -> int:
    """Make the rows still leased by ``owner`` (a relay restarted under the same worker id)
    available again at once; returns how many."""
    return int(outbox_model().objects.using(alias).filter(_leased_to(owner)).update(lease_owner=None, available_at=None))


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


def _vendor(connection: Any) -> Any:
    """What capture knows of the database behind ``connection`` (``dbevents.capture.vendors``)."""
    return connection.dbevents.vendor
