"""AMQP 0-9-1 framing of ``basic.publish``, byte for byte as py-amqp writes it, without
building py-amqp's objects per message (:class:`dbevents.transport.NamekoTransport` writes
these frames straight to the socket)."""

from __future__ import annotations

import struct
from typing import Any

from dbevents.events import HEADER_EVENT_ID, Message

WRITE_CHUNK = 256 * 1024   # bytes written to the socket per send
_PUBLISH_METHOD = struct.pack(">HHH", 60, 40, 0)   # basic.publish, reserved-1
_PROPERTY_FLAGS = struct.pack(">H", 0xF800)        # content-type/-encoding, headers, delivery-mode, priority


def encode_publish(channel_id: int, exchange: str, message: Message, mandatory: bool, frame_max: int) -> bytes:
    """The AMQP 0-9-1 frames of ``basic.publish`` for ``message``: byte for byte what py-amqp
    writes for the message kombu's ``Producer.publish`` builds (properties content_type,
    content_encoding, headers, delivery_mode 2, priority 0), without building objects per
    message. ``tests/test_transport.py`` compares the two."""
    pack = struct.pack
    ex = exchange.encode()
    rk = message.routing_key.encode()
    method = b"".join((_PUBLISH_METHOD, pack("B", len(ex)), ex, pack("B", len(rk)), rk, b"\x01" if mandatory else b"\x00"))
    ct = message.content_type.encode()
    ce = message.content_encoding.encode()
    body = message.body
    header = b"".join((pack(">HHQ", 60, 0, len(body)), _PROPERTY_FLAGS, pack("B", len(ct)), ct, pack("B", len(ce)), ce,
                       _table(message.headers), b"\x02\x00"))
    out = [pack(">BHI", 1, channel_id, len(method)), method, b"\xce",
           pack(">BHI", 2, channel_id, len(header)), header, b"\xce"]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        part = body[start:start + chunk]
        out += [pack(">BHI", 3, channel_id, len(part)), part, b"\xce"]
    return b"".join(out)


_ITEM_CACHE: dict[tuple[str, Any], bytes] = {}


def _table(headers: dict[str, Any]) -> bytes:
    """An AMQP field table, encoded as py-amqp encodes it (strings 'S', ints 'I'/'L', bools
    't'); other value types go through py-amqp itself. Most headers repeat from message to
    message (model, action, transaction): their encodings are remembered."""
    parts = []
    cache = _ITEM_CACHE
    for item in headers.items():
        encoded = cache.get(item)
        if encoded is None:
            encoded = _item(*item)
            if encoded is None:
                from amqp.serialization import dumps

                return bytes(dumps("F", [headers]))
            if item[0] != HEADER_EVENT_ID:
                if len(cache) > 4096:
                    cache.clear()
                cache[item] = encoded
        parts.append(encoded)
    data = b"".join(parts)
    return struct.pack(">I", len(data)) + data


def _item(key: str, value: Any) -> bytes | None:
    pack = struct.pack
    k = key.encode("utf-8", "surrogatepass")
    k = pack("B", len(k)) + k
    if isinstance(value, str):
        v = value.encode("utf-8", "surrogatepass")
        return k + pack(">cI", b"S", len(v)) + v
    if isinstance(value, bool):
        return k + pack(">cB", b"t", int(value))
    if isinstance(value, int):
        return k + (pack(">cq", b"L", value) if value > 2147483647 or value < -2147483647 else pack(">ci", b"I", value))
    return None
