"""A transport that confirms every message and counts it, by model (the gate's report)."""

from __future__ import annotations

from collections.abc import Sequence

from dbevents.events import HEADER_MODEL
from dbevents.transport import Message, PublishResult
from tests.django_suite import report


class CountingTransport:
    """Stands in for the broker: every message is confirmed and counted."""

    def publish(self, messages: Sequence[Message]) -> PublishResult:
        for message in messages:
            report.add("events", str(message.headers.get(HEADER_MODEL, "?")))
        return PublishResult(confirmed=list(messages))

    def close(self) -> None:
        pass
