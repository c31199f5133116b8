"""Per-row order on the publishing side: the events of one row (model + primary key, the outbox
``event_key``) go to the broker in commit order, whoever publishes them.

Outbox ids are that order: a row's second writer waits for the first one's COMMIT (row lock),
so its INSERT into the outbox comes later. A publisher therefore sends its messages in id order
(threads of one process may queue their transactions the other way round), and never has two
events of one row unconfirmed at once: a broker that nacks the first but acks the second (a
queue with ``x-overflow: reject-publish``) would otherwise deliver them out of order. Messages
keep their order otherwise: a transaction's events go out in statement order.
"""

from __future__ import annotations

from collections.abc import Sequence

from dbevents.events import Message


def commit_order(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with the outbox ones of each database in ``id`` order, in the places outbox
    messages held (messages published directly keep theirs: they have no id)."""
    places = [i for i, m in enumerate(messages) if m.outbox_id is not None]
    ordered = list(messages)
    if len(places) < 2:
        return ordered
    in_order = sorted((messages[i] for i in places), key=lambda m: (m.alias or "", m.outbox_id or 0))
    for place, message in zip(places, in_order, strict=True):
        ordered[place] = message
    return ordered


def segments(messages: Sequence[Message]) -> list[list[Message]]:
    """``messages`` cut, in order, into runs that hold no two events of one row: a run is
    confirmed before the next is published. One run when every row appears once (the usual
    case); a transaction that wrote a row twice is published in two runs or more."""
    out: list[list[Message]] = []
    keys: set[str] = set()
    for m in messages:
        key = m.key
        if not out or key in keys:
            out.append([])
            keys = set()
        out[-1].append(m)
        keys.add(key)
    return out
