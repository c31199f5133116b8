"""The event a consumer receives: name, payload, and the metadata carried in AMQP headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


def describe_events(events: list[Event]) -> str:
    """Every event of ``events`` described, comma-separated: log lines name each one."""
    return ", ".join(e.describe() for e in events)
