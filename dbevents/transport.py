"""The transport seam: what puts a batch of encoded messages on the broker (:class:`Transport`,
:class:`PublishResult`), the default :class:`NamekoTransport` -- nameko's wire format over one
long-lived AMQP connection with publisher confirms -- with its AMQP framing, and the
:class:`Sender` the publisher thread and the relay publish through.
"""

from __future__ import annotations

import importlib
import logging
import struct
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from django.utils.module_loading import import_string

from dbevents import conf
from dbevents.events import HEADER_EVENT_ID, Message, encode, headers_json

if TYPE_CHECKING:
    from kombu import Connection

logger = logging.getLogger("dbevents")


@dataclass
class PublishResult:
    """What became of a batch: confirmed by the broker, returned as unroutable (with the
    broker's reason), or failed (nacked, or unconfirmed when the connection broke -- these may
    or may not have reached the broker; publishing them again can duplicate them)."""

    confirmed: list[Message] = field(default_factory=list)
    returned: list[tuple[Message, str]] = field(default_factory=list)
    failed: list[Message] = field(default_factory=list)
    error: BaseException | None = None


class Transport(Protocol):
    """Sends batches of messages. One instance is used by one thread at a time."""

    def publish(self, messages: Sequence[Message]) -> PublishResult: ...

    def close(self) -> None: ...


class NamekoTransport:
    """Publishes exactly as nameko's standalone event dispatcher does -- exchange
    ``<service>.events`` built by nameko's ``get_event_exchange`` (topic, durable, declared
    unless ``DECLARE_EVENT_EXCHANGES`` is False), routing key = event name, body in nameko's
    serializer, persistent delivery, priority 0 -- but fast: one long-lived connection, each
    exchange declared once per connection, and a whole batch published before waiting for its
    publisher confirms (pipelined on one channel), instead of one round trip per message.

    Messages are published ``mandatory`` (``DBEVENTS_PUBLISH_MANDATORY``): one that no queue is
    bound for comes back as *returned*, and a broker ``nack`` makes it *failed*; neither passes
    silently. ``memory://`` works too (kombu's in-process broker, which has no confirms).

    Reads ``NAMEKO_CONFIG`` (``AMQP_URI`` -- or the top-level ``AMQP_URI`` --, ``AMQP_SSL``,
    ``LOGIN_METHOD``, ``AUTO_DELETE_EVENT_EXCHANGES``, ``DECLARE_EVENT_EXCHANGES``). Not
    thread-safe by design: the process's publisher thread (or a relay) owns its instance.
    """

    def __init__(self) -> None:
        self.config = conf.nameko_config()
        self.uri = self.config.get("AMQP_URI")
        if not self.uri:
            raise RuntimeError("dbevents: no AMQP_URI in NAMEKO_CONFIG nor in settings (see check dbevents.E007)")
        self.connection: Connection | None = None
        self.channel: Any = None
        self.confirms = False
        self._declared: set[str] = set()
        self._exchanges: dict[str, Any] = {}
        self._tag = 0
        self._outstanding: dict[int, int] = {}   # delivery tag -> index in the batch
        self._acked: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: dict[str, str] = {}     # event id -> reason

    # ------------------------------------------------------------------ connection

    def _connect(self) -> None:
        from kombu import Connection

        timeout = float(conf.get("DBEVENTS_CONNECT_TIMEOUT"))
        confirm_timeout = float(conf.get("DBEVENTS_CONFIRM_TIMEOUT"))
        connection = Connection(
            self.uri,
            ssl=self.config.get("AMQP_SSL"),
            login_method=self.config.get("LOGIN_METHOD"),
            connect_timeout=timeout,
            # No heartbeats: nothing would send them while the process is idle, and a dead
            # connection shows up on the next publish (write error or confirm timeout) anyway.
            heartbeat=0,
            # py-amqp: waits for each confirm when True -- we pipeline them ourselves; a stalled
            # socket raises instead of hanging the publisher thread.
            transport_options={"confirm_publish": False, "read_timeout": confirm_timeout,
                               "write_timeout": confirm_timeout},
        )
        try:
            # One attempt: retrying (with back-off and logging) is the caller's job.
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            channel = connection.channel()
            self.confirms = hasattr(channel, "confirm_select")
            if self.confirms:
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
            if hasattr(channel, "events"):
                channel.events["basic_return"].add(self._on_return)
        except BaseException:
            _close_quietly(connection)
            raise
        self.connection, self.channel = connection, channel
        self._declared.clear()
        self._tag = 0
        logger.debug("dbevents: connected to %s", connection.as_uri())

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            _close_quietly(connection)

    def _exchange(self, service_name: str) -> str:
        exchange = self._exchanges.get(service_name)
        if exchange is None:
            from nameko.standalone.events import get_event_exchange

            exchange = self._exchanges[service_name] = get_event_exchange(service_name, self.config)
        if exchange.name not in self._declared:
            exchange(self.channel).declare()   # a no-op when DECLARE_EVENT_EXCHANGES is False
            self._declared.add(exchange.name)
        return str(exchange.name)

    # ------------------------------------------------------------------ confirms

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self._acked)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self._nacked)

    def _settle(self, tag: int, multiple: bool, into: set[int]) -> None:
        if not multiple:
            index = self._outstanding.pop(tag, None)
            if index is not None:
                into.add(index)
            return
        # Tags were added in increasing order, so the ones up to ``tag`` are at the front.
        outstanding = self._outstanding
        while outstanding:
            first = next(iter(outstanding))
            if first > tag:
                break
            into.add(outstanding.pop(first))

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        headers = getattr(message, "headers", None) or getattr(message, "properties", {}).get("application_headers") or {}
        event_id = headers.get(HEADER_EVENT_ID)
        reason = f"{getattr(exc, 'reply_text', exc)}: no queue is bound to {exchange!r} for routing key {routing_key!r}"
        if event_id is not None:
            self._returned[str(event_id)] = reason

    # ------------------------------------------------------------------ publishing

    def publish(self, messages: Sequence[Message]) -> PublishResult:
        """Publish ``messages`` in order, then wait for all their confirms at once."""
        result = PublishResult()
        self._outstanding.clear()
        self._acked.clear()
        self._nacked.clear()
        self._returned.clear()
        try:
            if self.connection is None:
                self._connect()
            mandatory = bool(conf.get("DBEVENTS_PUBLISH_MANDATORY"))
            channel = self.channel
            if self.confirms:
                # AMQP 0-9-1 over py-amqp: frames encoded here, many messages per socket write.
                write = self.connection.connection.transport.write  # type: ignore[union-attr]
                frame_max = int(self.connection.connection.frame_max)  # type: ignore[union-attr]
                pending: list[bytes] = []
                size = 0
                for index, message in enumerate(messages):
                    exchange = self._exchange(message.service_name)
                    frames = encode_publish(channel.channel_id, exchange, message, mandatory, frame_max)
                    pending.append(frames)
                    size += len(frames)
                    self._tag += 1
                    self._outstanding[self._tag] = index
                    if size >= _WRITE_CHUNK:
                        write(b"".join(pending))
                        pending, size = [], 0
                if pending:
                    write(b"".join(pending))
            else:
                for index, message in enumerate(messages):
                    exchange = self._exchange(message.service_name)
                    amqp_message = channel.prepare_message(
                        message.body, 0, message.content_type, message.content_encoding,
                        message.headers, {"delivery_mode": 2},
                    )
                    channel.basic_publish(amqp_message, exchange=exchange, routing_key=message.routing_key,
                                          mandatory=mandatory)
                    self._acked.add(index)
            self._wait_for_confirms()
        except Exception as exc:  # the connection is unusable: what is unconfirmed has failed
            result.error = exc
            self.close()
        for index, message in enumerate(messages):
            reason = self._returned.get(message.event_id)
            if reason is not None:   # it reached the broker, which had nowhere to route it
                result.returned.append((message, reason))
            elif index in self._acked:
                result.confirmed.append(message)
            else:
                result.failed.append(message)
        if self._nacked and result.error is None:
            result.error = RuntimeError(f"the broker rejected (nack) {len(self._nacked)} message(s)")
        self._outstanding.clear()
        return result

    def _wait_for_confirms(self) -> None:
        if not self._outstanding:
            return
        assert self.connection is not None
        deadline = time.monotonic() + float(conf.get("DBEVENTS_CONFIRM_TIMEOUT"))
        while self._outstanding:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"the broker did not confirm {len(self._outstanding)} message(s) within "
                    f"DBEVENTS_CONFIRM_TIMEOUT={conf.get('DBEVENTS_CONFIRM_TIMEOUT')}s"
                )
            try:
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                continue  # the deadline check above raises


_WRITE_CHUNK = 256 * 1024
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


def _close_quietly(connection: Any) -> None:
    """Close a broker connection that is being abandoned (it may already be broken)."""
    try:
        connection.close()
    except Exception as exc:  # already broken: nothing left to release but the socket
        logger.debug("dbevents: closing a broken broker connection: %s: %s", type(exc).__name__, exc)
        try:
            connection.collect()
        except Exception as again:
            logger.debug("dbevents: releasing a broken broker connection: %s", again)


class Sender:
    """The transport named by ``DBEVENTS_TRANSPORT``, built on first use and rebuilt after a
    failure or :meth:`reset`. :meth:`publish` never raises: a transport that cannot even be
    built fails the whole batch. Shared by the publisher thread and the relay."""

    def __init__(self) -> None:
        self._transport: Transport | None = None

    def publish(self, messages: Sequence[Message]) -> PublishResult:
        try:
            if self._transport is None:
                self._transport = import_string(conf.get("DBEVENTS_TRANSPORT"))()
            assert self._transport is not None
            result = self._transport.publish(messages)
        except Exception as exc:
            result = PublishResult(failed=list(messages), error=exc)
        if result.error is not None:
            self.reset()
        return result

    def reset(self) -> None:
        """Close the transport; the next publish builds a new one (new connection, settings)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


# Moved to dbevents.publisher (and dbevents.events); the old names work for one release.
_MOVED = {"wait": "dbevents.publisher", "publishing": "dbevents.publisher"}
__all__ = ["Message", "NamekoTransport", "PublishResult", "Sender", "Transport", "encode", "encode_publish",
           "headers_json"]


def __getattr__(name: str) -> Any:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"dbevents.transport.{name} moved to {home}.{name}", DeprecationWarning, stacklevel=2)
    # Looked up by name, not imported: the publisher imports this module, not the other way round.
    return getattr(importlib.import_module(home), name)
