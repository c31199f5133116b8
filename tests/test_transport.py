"""The publisher's own AMQP framing is byte for byte what py-amqp writes for the message kombu
(and so nameko) builds."""

from __future__ import annotations

import amqp
import pytest
from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from dbevents.transport import Message, encode_publish


class Recorder:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk) -> None:
        self.data += bytes(chunk)


class FakeConnection:
    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0


def py_amqp_frames(channel_id, exchange, message, mandatory, frame_max):
    recorder = Recorder()
    write = frame_writer(FakeConnection(frame_max), recorder)
    content = amqp.Message(message.body, priority=0, content_type=message.content_type,
                           content_encoding=message.content_encoding, application_headers=message.headers,
                           delivery_mode=2)
    args = dumps("Bssbb", (0, exchange, message.routing_key, mandatory, False))
    write(1, channel_id, spec.Basic.Publish, args, content)
    return bytes(recorder.data)


HEADERS = {
    "dbevents.event_id": "0f3c5d6e7a8b4c9d8e7f6a5b4c3d2e1f", "dbevents.model": "shop.Customer",
    "dbevents.pk": 42, "dbevents.action": "updated", "dbevents.alias": "default",
    "dbevents.transaction_id": "a" * 32, "dbevents.ordinal": 1, "dbevents.transaction_size": 3,
    "dbevents.timestamp": "2026-11-27T10:00:00+00:00",
}


@pytest.mark.parametrize("headers", [
    HEADERS,
    {**HEADERS, "dbevents.pk": "Zürich-7"},              # str keys, non-ASCII
    {**HEADERS, "dbevents.pk": 2 ** 40},                 # 64-bit int
    {**HEADERS, "dbevents.pk": -5, "flag": True},
    {**HEADERS, "ratio": 0.5, "none": None},             # types py-amqp encodes itself
])
@pytest.mark.parametrize("body", [b'{"id": 42, "name": "Zoe"}', b"", "é".encode() * 100_000])
@pytest.mark.parametrize("mandatory", [True, False])
def test_frames_equal_py_amqp(headers, body, mandatory):
    message = Message("orders", "customer__updated", body, "application/json", "utf-8", headers)
    for frame_max in (131072, 4096):
        assert encode_publish(3, "orders.events", message, mandatory, frame_max) == \
            py_amqp_frames(3, "orders.events", message, mandatory, frame_max)
