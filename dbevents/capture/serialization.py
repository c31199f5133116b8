"""Serialization: turn a transaction's pending events into :class:`~dbevents.events.Event` objects.

Runs inside the transaction, just before COMMIT (or right after an autocommit statement). Rows
are serialized in one ``Serializer(instances, many=True)`` call per model (the generated
``ModelSerializer`` of an entry without ``serializer``: one shared instance, row by row, with the
same output).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbevents import events as ev
from dbevents import runtime
from dbevents.registry import unwrap_key

if TYPE_CHECKING:
    from dbevents.capture.pending import PendingEvent
    from dbevents.registry import ModelEntry

logger = logging.getLogger("dbevents")


def event_name(entry: ModelEntry, action: str, instance: Any) -> str:
    """``<prefix>__<action>``; with ``status_field``, creates and updates are named after the
    field's value instead (``payment__paid``)."""
    if entry.status_field and action != "deleted":
        return f"{entry.prefix}__{getattr(instance, entry.status_field)}"
    return f"{entry.prefix}__{action}"


def header_pk(pk: Any) -> Any:
    """Primary keys travel as int when they are ints, else as str (AMQP header types); a
    composite key as the list of its parts."""
    pk = unwrap_key(pk)
    if isinstance(pk, tuple):
        return [header_pk(part) for part in pk]
    return pk if isinstance(pk, int) and not isinstance(pk, bool) else str(pk)


def new_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as 32 hex digits, like ``uuid.uuid4().hex`` but from
    one ``os.urandom`` call: a bulk statement's 10,000 events need 10,000 ids."""
    if count < 8:
        return [uuid.uuid4().hex for _ in range(count)]
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    digits = raw.hex()
    return [digits[i:i + 32] for i in range(0, 32 * count, 32)]


def serialize(entry: ModelEntry, members: list[PendingEvent], alias: str) -> list[tuple[PendingEvent, Any]]:
    """``members``' payloads: one serializer call for all of them; when that raises, row by row,
    so that a row the serializer fails on loses its own event only (each logged with its pk)."""
    try:
        represent = entry.representer()
        if represent is not None:
            return [(e, represent(e.instance)) for e in members]
        data = entry.serializer_class()([e.instance for e in members], many=True).data
        return list(zip(members, data, strict=True))
    except Exception as exc:
        if len(members) == 1:
            _log_lost(entry, members[0], alias, exc)
            return []
        logger.warning("dbevents: serializer of %s failed on %d row(s) at once on %r (%s: %s); serializing "
                       "them one by one", entry.label, len(members), alias, type(exc).__name__, exc)
    one = represent or (lambda instance: entry.serializer_class()(instance).data)
    out = []
    failed = 0
    for event in members:
        try:
            item = one(event.instance)
        except Exception as exc:
            failed += 1
            if failed <= 10:
                _log_lost(entry, event, alias, exc)
            continue
        out.append((event, item))
    if failed > 10:
        served = {id(e) for e, _ in out}
        logger.error("dbevents: serializer of %s failed on %d more row(s) on %r; their events are lost: pks %s%s",
                     entry.label, failed - 10, alias, [e.pk for e in members if id(e) not in served][10:60],
                     " ..." if failed > 60 else "")
    return out


def _log_lost(entry: ModelEntry, event: PendingEvent, alias: str, exc: BaseException) -> None:
    logger.error("dbevents: serializer of %s failed on pk=%r on %r (%s: %s); its %s event is lost", entry.label,
                 event.pk, alias, type(exc).__name__, exc, event.action, exc_info=exc)


@dataclass(eq=False)
class Series:
    """What the events of one transaction share when they are built in chunks (a large
    transaction written to the outbox as it goes): its id, time and the ordinals used so far."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    built: int = 0


def build_events(pending: list[PendingEvent], alias: str, series: Series | None = None, *,
                 last: bool = True) -> list[ev.Event]:
    """Serialize ``pending`` (in statement order) into events with ids, ordinals and headers.
    With ``series`` they continue its ordinals; ``last=False`` (a chunk of a transaction still
    running) leaves their ``transaction_size`` unknown (None).

    A serializer that raises loses the events of the rows it fails on only; each is logged with
    the model and key.
    """
    batches: dict[int, tuple[ModelEntry, list[PendingEvent]]] = {}
    for event in pending:
        entry = event.entry
        if entry is None or event.instance is None:
            continue
        if event.mutes and runtime.is_muted(event.mutes, entry.model._meta.label, event.pk):
            continue
        batches.setdefault(id(entry), (entry, []))[1].append(event)
    payloads: dict[int, Any] = {}
    for entry, members in batches.values():
        for event, item in serialize(entry, members, alias):
            payloads[id(event)] = item
    kept = [e for e in pending if id(e) in payloads]
    series = series or Series()
    transaction_id, timestamp, start = series.id, series.timestamp, series.built + 1
    size = series.built + len(kept) if last else None
    series.built += len(kept)
    ids = new_ids(len(kept))
    services: dict[int, str] = {}
    out = []
    for ordinal, event in enumerate(kept, start=start):
        entry = event.entry
        assert entry is not None  # an event with a payload has its entry
        service = services.get(id(entry))
        if service is None:
            service = services[id(entry)] = entry.service()
        out.append(
            ev.Event(
                name=event_name(entry, event.action, event.instance),
                service_name=service,
                payload=payloads[id(event)],
                headers={
                    ev.HEADER_EVENT_ID: ids[ordinal - start],
                    ev.HEADER_MODEL: entry.label,
                    ev.HEADER_PK: header_pk(event.pk),
                    ev.HEADER_ACTION: event.action,
                    ev.HEADER_ALIAS: alias,
                    ev.HEADER_TRANSACTION_ID: transaction_id,
                    ev.HEADER_ORDINAL: ordinal,
                    ev.HEADER_TRANSACTION_SIZE: size,
                    ev.HEADER_TIMESTAMP: timestamp,
                },
                origin=(alias, *event.order),
            )
        )
    return out
