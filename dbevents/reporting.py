"""The log lines that say what became of events that could not simply be published: each names
the events (ids, model, pk) and the cause, bounded in length (the first ids and a count)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dbevents.events import Message, Unencodable, describe_events

logger = logging.getLogger("dbevents")


def log_unencodable(unencodable: Sequence[Unencodable], alias: str | None, others: int, *, kept: bool) -> None:
    """One ERROR per event whose serializer output cannot be encoded (the first ten, then a
    count): model, pk, the value at fault and the real cause."""
    fate = (f"it is kept in the outbox of {alias!r} as dead (see dbevents_status)" if kept
            else "it is lost (direct delivery)")
    for u in unencodable[:10]:
        logger.error("dbevents: event %s cannot be encoded for the broker: %s; %s; the transaction's other "
                     "%d event(s) are published", u.event.describe(), u.why, fate, others)
    if len(unencodable) > 10:
        logger.error("dbevents: %d more event(s) of the transaction on %r cannot be encoded either: %s",
                     len(unencodable) - 10, alias, describe_events([u.event for u in unencodable[10:]]))


def log_returned(returned: Sequence[tuple[Message, str]]) -> None:
    """One ERROR per reason: the broker returned these messages as unroutable."""
    by_reason: dict[str, list[Message]] = {}
    for message, reason in returned:
        by_reason.setdefault(reason, []).append(message)
    for reason, messages in by_reason.items():
        logger.error("dbevents: the broker returned %d event(s) as unroutable (%s); nobody received: %s "
                     "(bind a queue first, or set DBEVENTS_PUBLISH_MANDATORY = False)", len(messages), reason,
                     describe_events(messages))
