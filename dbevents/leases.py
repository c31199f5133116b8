"""Who publishes an outbox row: the committing process owns the rows it wrote (a lease until
``DBEVENTS_OUTBOX_LEASE``), relays claim the available ones in ``id`` order, and rows not
published go back with back-off. Per-row order: a row is claimable only when no earlier event of
the same row (``event_key``) is unsent.

* :func:`claim` / :func:`release` -- ``dbevents_relay``: take available rows in ``id`` order
  (``FOR UPDATE SKIP LOCKED`` where the database has it; one atomic UPDATE elsewhere), lease
  them, publish, then mark them sent (:func:`dbevents.outbox.mark_published`) or schedule their
  next attempt with back-off. Unsent rows never expire.
* :func:`take_own` -- the committing process reads back what a large transaction wrote before
  COMMIT.
* :func:`release_dead_owners` / :func:`release_owner` -- rows of owners known to be gone.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone

from dbevents import conf
from dbevents.events import Message
from dbevents.outbox import MESSAGE_FIELDS, by_alias, chunks, message_of, outbox_model, retrying, unsent, vendor_of


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
            rows = list(candidates.select_for_update(skip_locked=True).values_list(*MESSAGE_FIELDS)[:limit])
            if not rows:
                return []
            manager.filter(pk__in=[r[0] for r in rows]).update(lease_owner=token, available_at=until)
            return [message_of(row, alias) for row in rows]
        if vendor_of(connection).claims_by_locking:
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
                    .values_list(*MESSAGE_FIELDS))
    return [message_of(row, alias) for row in rows]


def claims_concurrently(alias: str) -> bool:
    """Whether a relay may claim on ``alias`` from a second thread while it marks on the first
    (not on SQLite, where dbevents' writers take turns: dbevents.sqlite_gate)."""
    return not vendor_of(connections[alias]).gated


def release(messages: Sequence[Message], error: str, *, owner: str, backoff: bool = True) -> None:
    """Give rows that could not be published back (see :func:`release_ids`)."""
    for alias, ids in by_alias(messages).items():
        release_ids(alias, ids, error, owner=owner, backoff=backoff)


def release_ids(alias: str, ids: Sequence[int], error: str, *, owner: str, backoff: bool = True) -> None:
    """Give the rows ``ids`` of ``alias``'s outbox back, with their next attempt scheduled after
    an exponential back-off (``DBEVENTS_PUBLISH_RETRY_DELAY`` doubled per attempt, capped at
    ``DBEVENTS_PUBLISH_RETRY_MAX_DELAY``). Nothing expires: a row is retried until it is sent.
    Without ``backoff`` (rows not attempted: held back for order, a full queue, an exiting
    process) they are available at once, and ``error`` is not recorded. Only rows still leased
    to ``owner`` (a process or relay name) change: one whose lease ran out and that another
    relay took keeps that relay's lease."""
    from django.db.models import F

    leased = outbox_model().objects.using(alias).filter(_leased_to(owner))
    if not backoff:
        retrying(alias, functools.partial(_make_available, leased, ids))
        return

    def give_back() -> None:
        by_attempts: dict[int, list[int]] = {}
        for chunk in chunks(ids):
            for i, n in leased.filter(pk__in=chunk).values_list("id", "attempts"):
                by_attempts.setdefault(n, []).append(i)
        now = timezone.now()
        for n, group in by_attempts.items():
            wait = min(float(conf.get("DBEVENTS_PUBLISH_RETRY_DELAY")) * 2 ** n,
                       float(conf.get("DBEVENTS_PUBLISH_RETRY_MAX_DELAY")))
            for chunk in chunks(group):
                leased.filter(pk__in=chunk).update(attempts=F("attempts") + 1, last_error=error[:2000],
                                                   lease_owner=None, available_at=now + timedelta(seconds=wait))

    retrying(alias, give_back)


def take_own(alias: str, ids: Sequence[int], owner: str) -> list[Message]:
    """The rows ``ids`` of ``alias``'s outbox still leased to ``owner`` as written (a large
    transaction's, read back after COMMIT by the process that wrote them), in ``id`` order. A
    lease with less than half of ``DBEVENTS_OUTBOX_LEASE`` left is renewed first (usually none
    is: the rows were written moments ago); rows a relay took meanwhile are left to it."""
    manager = outbox_model().objects.using(alias)

    def take() -> list[Message]:
        lease = float(conf.get("DBEVENTS_OUTBOX_LEASE"))
        now = timezone.now()
        out: list[Message] = []
        with transaction.atomic(using=alias):
            for chunk in chunks(ids):
                mine = manager.filter(pk__in=list(chunk), lease_owner=owner, sent_at__isnull=True)
                mine.filter(available_at__lt=now + timedelta(seconds=lease / 2)).update(
                    available_at=now + timedelta(seconds=lease))
                out += [message_of(row, alias) for row in mine.order_by("id").values_list(*MESSAGE_FIELDS)]
        return out

    taken: list[Message] = retrying(alias, take)
    return taken


def _make_available(rows: Any, ids: Sequence[int]) -> None:
    for chunk in chunks(ids):
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
