"""At COMMIT: build the transaction's events from its pending ones, write their outbox rows in
the same transaction, and after COMMIT hand them to the publisher."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dbevents import conf, outbox, publisher
from dbevents.capture.pending import PendingEvents, describe
from dbevents.capture.rows import Rows
from dbevents.capture.serialization import build_events
from dbevents.capture.vendors import Vendor
from dbevents.events import Committed, Message, describe_events, encode_each

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
        events = build_events(ready, alias)
    except Exception:
        logger.exception("dbevents: the events of a transaction on %r are lost (%s)", alias, describe(events_before))
        events = []
    if not peek:
        pending.discard()
    return events


def prepare_commit(pending: PendingEvents, vendor: Vendor, rows: Rows) -> Committed:
    """:func:`prepare` at COMMIT, and the events' outbox rows written in the same transaction
    (``DBEVENTS_DELIVERY = "outbox"``). Where a failed query aborts the transaction (PostgreSQL)
    and would silently turn the COMMIT into a rollback, this runs behind a savepoint, rolled back
    to if anything failed."""
    if not pending.events:
        return NOTHING
    # Nothing may escape from here: an exception out of commit() that is not a DatabaseError
    # commits anyway on SQLite and MariaDB, and leaves a PostgreSQL connection inside a
    # transaction Django has forgotten.
    connection = rows.connection
    events_before = pending.events
    try:
        if vendor.commit_guard:
            rows.execute("SAVEPOINT dbevents_prepare")
        events = prepare(pending, connection.alias)
        messages = store(connection, events)
        if vendor.commit_guard and vendor.transaction_failed():
            rows.execute("ROLLBACK TO SAVEPOINT dbevents_prepare")
    except Exception:
        logger.exception("dbevents: the events of a transaction on %r are lost (%s)", connection.alias,
                         describe(events_before))
        pending.discard()
        return NOTHING
    return Committed(events, connection.alias, messages)


def store(connection: Any, events: list[Event]) -> list[Message] | None:
    """Write ``events`` to the outbox when it is on (and no testing sink keeps them from the
    broker); None means "publish directly". A failure falls back to direct delivery, logged with
    the event ids."""
    if not events or not conf.outbox_enabled():
        return None
    if not publisher.publishing():
        return None
    messages, unencodable = encode_each(events)
    try:
        stored = outbox.store(connection, messages, dead=[(u.message, u.why) for u in unencodable])
    except Exception as exc:
        logger.error(
            "dbevents: writing %d event(s) to the outbox of %r failed (%s: %s); they are published "
            "directly, without the outbox's guarantee (is the dbevents app migrated on this database? "
            "manage.py migrate dbevents --database=%s): %s", len(events), connection.alias,
            type(exc).__name__, exc, connection.alias, describe_events(events), exc_info=True,
        )
        return None
    publisher.log_unencodable(unencodable, connection.alias, len(messages), kept=True)
    return stored[:len(messages)]
