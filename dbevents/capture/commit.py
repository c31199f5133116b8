"""At COMMIT: build the transaction's events from its pending ones, write their outbox rows in
the same transaction, and after COMMIT hand them to the publisher. A large transaction writes
its events to the outbox in chunks as it goes (:func:`spill`), so its memory stays bounded."""

from __future__ import annotations

import logging
from array import array
from typing import TYPE_CHECKING, Any

from dbevents import conf, outbox, publisher, reporting, runtime
from dbevents.capture.pending import NEVER, PendingEvents, Spilled, describe
from dbevents.capture.rows import Rows
from dbevents.capture.serialization import Series, build_events
from dbevents.capture.vendors import Vendor
from dbevents.events import Committed, Message, describe_events, encode_each
from dbevents.outbox_sql import CommitError

if TYPE_CHECKING:
    from dbevents.events import Event

logger = logging.getLogger("dbevents")


NOTHING = Committed([])


def prepare(pending: PendingEvents, alias: str, *, peek: bool = False, after: int = 0) -> list[Event]:
    """Build this transaction's events (inside it, before COMMIT). Never raises: a failure is
    logged with the models and keys whose events are lost.

    With ``peek`` the events stay pending (testing helpers); ``after`` then limits them to
    statements captured after that statement number.
    """
    if not pending.events:
        return []
    events_before = pending.events
    try:
        pending.load_missing([e for e in events_before if e.instance is None])
        ready = [e for e in pending.events if e.instance is not None and e.order[0] > after]
        events = build_events(ready, alias, pending.series if not peek else None)
    except Exception:
        logger.exception("dbevents: the events of a transaction on %r are lost (%s)", alias, describe(events_before))
        events = []
    if not peek:
        pending.discard()
    return events


def prepare_commit(pending: PendingEvents, vendor: Vendor, rows: Rows, *, commit: bool = False) -> Committed:
    """:func:`prepare` at COMMIT, and the events' outbox rows written in the same transaction
    (``DBEVENTS_DELIVERY = "outbox"``). Where a failed query aborts the transaction (PostgreSQL)
    and would silently turn the COMMIT into a rollback, this runs behind a savepoint, rolled back
    to if anything failed. With ``commit`` the driver may commit the transaction along with the
    outbox rows (one round trip); the caller's COMMIT then finds nothing left to do. Raises only
    :class:`~dbevents.outbox_sql.CommitError`: that COMMIT failed, the transaction is gone."""
    if not pending.events and not pending.spilled:
        return NOTHING
    # Nothing else may escape from here: an exception out of commit() that is not a
    # DatabaseError commits anyway on SQLite and MariaDB, and leaves a PostgreSQL connection
    # inside a transaction Django has forgotten.
    connection = rows.connection
    events_before = pending.events
    spilled = array("q")
    for chunk in pending.spilled:
        spilled.extend(chunk.ids)
    guard = vendor.commit_guard
    if guard and vendor.transaction_failed():
        pending.discard()  # an aborted transaction: its COMMIT rolls back, nothing to emit
        return NOTHING
    # Building the events queries for rows that lack data and in serializers that read the
    # database; otherwise the savepoint goes with the outbox INSERT.
    early = guard and (bool(pending.incomplete) or any(
        e.table.entry is None or e.table.entry.serializer_may_query for e in pending.events))
    try:
        if early:
            rows.execute("SAVEPOINT dbevents_prepare")
        events = prepare(pending, connection.alias)
        messages = store(connection, events, savepoint="dbevents_prepare" if guard and not early else None,
                         commit=commit)
        if guard and vendor.transaction_failed():
            rows.execute("ROLLBACK TO SAVEPOINT dbevents_prepare")
    except CommitError:
        pending.discard()
        raise
    except Exception:
        logger.exception("dbevents: the events of a transaction on %r are lost (%s)", connection.alias,
                         describe(events_before))
        pending.discard()
        return Committed([], connection.alias, [], spilled) if spilled else NOTHING
    return Committed(events, connection.alias, messages, spilled)


def spill(pending: PendingEvents, vendor: Vendor) -> None:
    """Called inside a transaction once more than ``DBEVENTS_TRANSACTION_CHUNK`` of its events
    are pending: build, encode and write to the outbox those that may go early
    (:meth:`PendingEvents.spillable`), keeping only their outbox ids, which the publisher reads
    back after COMMIT. Only with outbox delivery and no testing sink; a failure leaves the
    events pending (logged) and stops spilling for the rest of the transaction."""
    chunk = int(conf.get("DBEVENTS_TRANSACTION_CHUNK"))
    if not conf.outbox_enabled() or runtime.sinks.get():
        pending.spill_after = NEVER
        return
    ready = pending.spillable()
    if len(ready) < chunk:
        pending.spill_after = len(pending.events) + chunk  # the rest waits behind earlier rows
        return
    connection, rows = pending.connection, pending.rows
    alias = connection.alias
    series = pending.series = pending.series or Series()
    built_before = series.built
    guard = vendor.commit_guard
    try:
        if guard:
            rows.execute("SAVEPOINT dbevents_spill")
        pending.load_missing([e for e in ready if e.instance is None])
        events = build_events([e for e in ready if e.instance is not None], alias, series, last=False)
        messages, unencodable = encode_each(events)
        stored = outbox.store(connection, messages, dead=[(u.message, u.why) for u in unencodable])
        if guard:
            rows.execute("RELEASE SAVEPOINT dbevents_spill")
    except Exception:
        series.built = built_before
        pending.spill_after = NEVER
        logger.exception("dbevents: writing %d event(s) of a large transaction on %r to the outbox before "
                         "COMMIT failed; they stay in memory and are written at COMMIT (%s)", len(ready),
                         alias, describe(ready))
        if guard:
            rows.execute("ROLLBACK TO SAVEPOINT dbevents_spill")
        return
    reporting.log_unencodable(unencodable, alias, len(messages), kept=True)
    pending.forget(ready)
    pending.spilled.append(Spilled(pending.statement_no, built_before, array("q", (m.outbox_id for m in stored[:len(messages)]))))
    pending.spill_after = len(pending.events) + chunk


def store(connection: Any, events: list[Event], *, savepoint: str | None = None,
          commit: bool = False) -> list[Message] | None:
    """Write ``events`` to the outbox when it is on (and no testing sink keeps them from the
    broker); None means "publish directly". A failure falls back to direct delivery, logged with
    the event ids (but :class:`~dbevents.outbox_sql.CommitError` is raised)."""
    if not events or not conf.outbox_enabled():
        return None
    if not publisher.publishing():
        return None
    messages, unencodable = encode_each(events)
    try:
        stored = outbox.store(connection, messages, dead=[(u.message, u.why) for u in unencodable],
                              savepoint=savepoint, commit=commit)
    except CommitError:
        raise
    except Exception as exc:
        logger.error(
            "dbevents: writing %d event(s) to the outbox of %r failed (%s: %s); they are published "
            "directly, without the outbox's guarantee (is the dbevents app migrated on this database? "
            "manage.py migrate dbevents --database=%s): %s", len(events), connection.alias,
            type(exc).__name__, exc, connection.alias, describe_events(events), exc_info=True,
        )
        return None
    reporting.log_unencodable(unencodable, connection.alias, len(messages), kept=True)
    return stored[:len(messages)]
