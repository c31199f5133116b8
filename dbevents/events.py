"""The records that travel from a COMMIT to the broker: :class:`Event` (what a consumer
receives: name, payload, and the metadata carried in AMQP headers), :class:`Message` (an event
encoded for the wire, as nameko's dispatcher encodes it) and :class:`Committed` (a committed
transaction's events, on their way to the publisher)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dbevents import conf

#: AMQP header names. nameko handlers ignore headers that do not start with ``nameko.``.
HEADER_EVENT_ID = "dbevents.event_id"
HEADER_MODEL = "dbevents.model"
HEADER_PK = "dbevents.pk"
HEADER_ACTION = "dbevents.action"
HEADER_ALIAS = "dbevents.alias"
HEADER_TRANSACTION_ID = "dbevents.transaction_id"
HEADER_ORDINAL = "dbevents.ordinal"
HEADER_TRANSACTION_SIZE = "dbevents.transaction_size"
HEADER_TIMESTAMP = "dbevents.timestamp"


@dataclass(frozen=True)
class Event:
    """One event: what happened to one row in one statement.

    ``name`` is ``<prefix>__<action or status>``; ``service_name`` selects the exchange
    ``<service_name>.events``; ``payload`` is the serializer's data; ``headers`` is the
    metadata sent as AMQP headers (see the ``HEADER_*`` constants): a unique event id, the
    model label, the primary key, the action (``created``/``updated``/``deleted``, also when
    ``status_field`` renames the event), the database alias, the transaction id, the event's
    1-based ordinal in its transaction and the transaction's event count, and the ISO-8601 UTC
    time the transaction's events were built.
    """

    name: str
    service_name: str
    payload: Any
    headers: dict[str, Any] = field(default_factory=dict)
    #: Where the event came from (alias, statement number, row index): lets the testing helpers
    #: recognise an event they already collected from a transaction that then committed.
    origin: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @property
    def id(self) -> str:
        """The unique event id (also in ``headers["dbevents.event_id"]``)."""
        return self.headers[HEADER_EVENT_ID]

    @property
    def model(self) -> str:
        """The model label, e.g. ``"shop.Order"``."""
        return self.headers[HEADER_MODEL]

    @property
    def action(self) -> str:
        """``created``, ``updated`` or ``deleted``."""
        return self.headers[HEADER_ACTION]

    @property
    def pk(self) -> Any:
        """The row's primary key (int, or str for other key types)."""
        return self.headers[HEADER_PK]

    def describe(self) -> str:
        """``"<event id> (<event name> <model> pk=<pk>)"``, for log lines."""
        return f"{self.id} ({self.name} {self.model} pk={self.pk})"

    def __str__(self) -> str:
        return f"{self.service_name}.events/{self.name} id={self.id}"


def describe_events(events: Sequence[Event | Message], limit: int = 20) -> str:
    """The first ``limit`` of ``events`` (events or messages) described, comma-separated, and how
    many more: a log line stays short whatever the size of the transaction."""
    shown = ", ".join(e.describe() for e in events[:limit])
    return f"{shown} ... and {len(events) - limit} more" if len(events) > limit else shown


def event_key(headers: dict[str, Any]) -> str:
    """``<model label>:<primary key>`` of an event (its outbox ``event_key``): the events of one
    key are published in commit order. Keys longer than the column are hashed."""
    pk = headers.get(HEADER_PK)
    key = f"{headers.get(HEADER_MODEL, '')}:{pk if isinstance(pk, (int, str)) else json.dumps(pk, default=str)}"
    if len(key) <= 191:
        return key
    return f"{headers.get(HEADER_MODEL, '')}:sha1:{hashlib.sha1(key.encode()).hexdigest()}"[:191]


@dataclass(frozen=True, slots=True)
class Message:
    """One event as it goes on the wire: serialized body and AMQP properties.

    ``outbox_id`` and ``alias`` say which outbox row (in which database) holds it, when the
    event went through the outbox.
    """

    service_name: str
    routing_key: str
    body: bytes
    content_type: str
    content_encoding: str
    headers: dict[str, Any]
    outbox_id: int | None = None
    alias: str | None = None
    _key: str = field(default="", repr=False, compare=False)

    @property
    def event_id(self) -> str:
        return str(self.headers.get(HEADER_EVENT_ID, "?"))

    @property
    def key(self) -> str:
        """The event's ``event_key`` (model and primary key), computed once."""
        key = self._key
        if not key:
            key = event_key(self.headers)
            object.__setattr__(self, "_key", key)  # a cache: the message stays immutable
        return key

    def stored(self, outbox_id: int, alias: str) -> Message:
        """This message as its outbox row holds it."""
        return Message(self.service_name, self.routing_key, self.body, self.content_type, self.content_encoding,
                       self.headers, outbox_id, alias, self._key)

    def describe(self) -> str:
        """``"<event id> (<event name> <model> pk=<pk>)"``, for log lines."""
        h = self.headers
        return f"{self.event_id} ({self.routing_key} {h.get(HEADER_MODEL, '?')} pk={h.get(HEADER_PK, '?')})"


@dataclass(frozen=True)
class Committed:
    """A committed transaction's events, as capture hands them to the publisher. ``messages``
    are their outbox rows (encoded in the transaction, same order) when they went through the
    outbox; otherwise the publisher thread encodes them (direct delivery). ``spilled`` are the
    outbox ids of the events a large transaction wrote before COMMIT, in chunks: they come
    first, and the publisher reads them back."""

    events: list[Event]
    alias: str | None = None
    messages: list[Message] | None = None
    spilled: Sequence[int] = ()

    def __len__(self) -> int:
        return len(self.spilled) + self.in_memory

    @property
    def in_memory(self) -> int:
        """How many of its events are held in memory (not read back from the outbox)."""
        return len(self.messages) if self.messages is not None else len(self.events)

    def describe(self) -> str:
        described = describe_events(self.messages if self.messages is not None else self.events)
        if not self.spilled:
            return described
        ids = self.spilled
        head = (f"{len(ids)} event(s) written before COMMIT, outbox ids of {self.alias!r} "
                f"{list(ids[:20])}{'...' if len(ids) > 20 else ''}")
        return f"{head}; {described}" if self.in_memory else head

    def split(self, size: int) -> tuple[Committed, Committed]:
        """The first ``size`` events and the rest (a transaction published in chunks)."""
        if self.spilled:
            if size < len(self.spilled):
                return (Committed([], self.alias, [], self.spilled[:size]),
                        Committed(self.events, self.alias, self.messages, self.spilled[size:]))
            first, rest = Committed(self.events, self.alias, self.messages).split(size - len(self.spilled))
            return Committed(first.events, self.alias, first.messages, self.spilled), rest
        if self.messages is not None:
            return (Committed([], self.alias, self.messages[:size]), Committed([], self.alias, self.messages[size:]))
        return Committed(self.events[:size], self.alias), Committed(self.events[size:], self.alias)


@functools.cache
def _codec() -> tuple[str, str, Any]:
    """(content type, content encoding, encoder) of nameko's configured serializer, looked up
    once instead of per message."""
    from kombu.serialization import dumps, registry
    from nameko import serialization

    name, _accept = serialization.setup(conf.nameko_config())  # also registers custom serializers
    codec = getattr(registry, "_encoders", {}).get(name)
    if codec is not None:
        return codec.content_type, codec.content_encoding, codec.encoder
    content_type, content_encoding, _ = dumps(None, serializer=name)
    return content_type, content_encoding, lambda data: dumps(data, serializer=name)[2]


def encode(events: Sequence[Event], *, alias: str | None = None) -> list[Message]:
    """Serialize ``events`` the way nameko's dispatcher would (``NAMEKO_CONFIG["SERIALIZER"]``,
    default JSON). Raises when a payload cannot be serialized (see :func:`encode_each`)."""
    messages, failures = encode_each(events, alias=alias)
    if failures:
        raise failures[0].error
    return messages


@dataclass(frozen=True)
class Unencodable:
    """An event whose payload the serializer cannot encode: ``why`` names the exception and the
    first value at fault (``payload['tags']``); ``message`` carries a diagnostic rendering of the
    payload (``repr`` for what JSON cannot hold), never published."""

    event: Event
    error: BaseException
    why: str
    message: Message


def encode_each(events: Sequence[Event], *, alias: str | None = None) -> tuple[list[Message], list[Unencodable]]:
    """:func:`encode`, event by event: the events that can be encoded, and those that cannot."""
    content_type, content_encoding, encoder = _codec()
    out = []
    failures: list[Unencodable] = []
    for event in events:
        try:
            body = encoder(event.payload)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc} (at {bad_value_path(event.payload, encoder)})"
            try:
                diagnostic = json.dumps(event.payload, default=repr).encode()
            except Exception:   # e.g. a key that is no string: the repr says it all
                diagnostic = json.dumps(repr(event.payload)).encode()
            failures.append(Unencodable(event, exc, why, Message(
                event.service_name, event.name, diagnostic, "application/json", "utf-8", dict(event.headers),
                alias=alias)))
            continue
        out.append(Message(
            service_name=event.service_name,
            routing_key=event.name,
            body=body.encode(content_encoding) if isinstance(body, str) else body,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=dict(event.headers),
            alias=alias,
        ))
    return out, failures


def bad_value_path(payload: Any, encoder: Any) -> str:
    """Where in ``payload`` the first value ``encoder`` rejects sits: ``payload['tags'][0]``."""
    path, value = "payload", payload
    while isinstance(value, (dict, list, tuple)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            try:
                encoder(item)
            except Exception:
                path, value = f"{path}[{key!r}]", item
                break
        else:
            break  # every child encodes: the container itself is at fault (a key that is no string)
    return path


def headers_json(headers: dict[str, Any]) -> str:
    """Headers as stored in the outbox."""
    return json.dumps(headers, separators=(",", ":"), default=str)


@conf.on_reload
def _reload() -> None:
    _codec.cache_clear()
