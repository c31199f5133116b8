"""Transport: puts committed events on the broker without making the committing request wait.

:func:`publish` is called after COMMIT. It gives the events to any active testing sink and
queues them for the process's publisher thread (:class:`Dispatcher`), which sends everything
queued as pipelined batches through a :class:`Transport` -- nameko's wire format over one
long-lived AMQP connection with publisher confirms by default -- retries what was not confirmed
with back-off, and then either logs the ids of the events it lost (``direct`` delivery) or leaves
them in the outbox for ``dbevents_relay`` (``outbox`` delivery). A broker that is down or slow
therefore never fails or blocks a request.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from django.utils.module_loading import import_string

from dbevents import conf, runtime
from dbevents.events import HEADER_EVENT_ID, HEADER_MODEL, HEADER_PK, Event, describe_events

if TYPE_CHECKING:
    from kombu import Connection

logger = logging.getLogger("dbevents")


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

    @property
    def event_id(self) -> str:
        return str(self.headers.get(HEADER_EVENT_ID, "?"))

    def describe(self) -> str:
        """``"<event id> (<event name> <model> pk=<pk>)"``, for log lines."""
        h = self.headers
        return f"{self.event_id} ({self.routing_key} {h.get(HEADER_MODEL, '?')} pk={h.get(HEADER_PK, '?')})"


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
    default JSON). Raises when a payload cannot be serialized."""
    content_type, content_encoding, encoder = _codec()
    out = []
    for event in events:
        body = encoder(event.payload)
        out.append(Message(
            service_name=event.service_name,
            routing_key=event.name,
            body=body.encode(content_encoding) if isinstance(body, str) else body,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=dict(event.headers),
            alias=alias,
        ))
    return out


def headers_json(headers: dict[str, Any]) -> str:
    """Headers as stored in the outbox."""
    return json.dumps(headers, separators=(",", ":"), default=str)


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


def record(done: Sequence[Message], returned: Sequence[tuple[Message, str]]) -> None:
    """After a publish: log what the broker returned, and mark the outbox rows of confirmed and
    returned messages as sent."""
    if returned:
        log_returned(returned)
    if any(m.outbox_id is not None for m in done) or any(m.outbox_id is not None for m, _ in returned):
        from dbevents import outbox

        outbox.mark_published(done, returned)


# ---------------------------------------------------------------------- the publisher thread


@dataclass
class Batch:
    """A committed transaction's events. ``messages`` is filled in when the events went through
    the outbox (serialized in the transaction); otherwise the publisher thread encodes them."""

    events: list[Event]
    alias: str | None
    messages: list[Message] | None = None

    def __len__(self) -> int:
        return len(self.messages) if self.messages is not None else len(self.events)

    def describe(self) -> str:
        if self.messages is not None:
            return ", ".join(m.describe() for m in self.messages)
        return describe_events(self.events)


class Dispatcher:
    """The process's queue of committed batches and the one thread that publishes them.

    The thread takes everything queued (up to ``DBEVENTS_PUBLISH_BATCH_SIZE`` messages), publishes
    it in order as one pipelined batch, and retries what was not confirmed. Only this thread
    touches the transport, so its broker connection needs no locking; after ``fork()`` the child
    starts a dispatcher of its own.
    """

    #: Seconds of idleness after which the thread closes its database connections.
    idle_release = 2.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Batch] = deque()
        self._queued = 0
        self._busy = False
        self._thread: threading.Thread | None = None
        self._sender = Sender()
        self._stale = False
        self._current: list[Batch] = []   # the batches being published
        self._release = False
        self._stopping = False

    def submit(self, events: list[Event], *, alias: str | None = None,
               messages: list[Message] | None = None) -> None:
        """Queue a committed transaction's events; returns at once."""
        batch = Batch(events, alias, messages)
        with self._cond:
            limit = conf.get("DBEVENTS_QUEUE_SIZE")
            if self._queued + len(batch) > limit:
                self._give_up(batch.messages, batch.events, f"the publish queue is full ({self._queued} events, "
                              f"DBEVENTS_QUEUE_SIZE={limit})")
                return
            self._queue.append(batch)
            self._queued += len(batch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dbevents-publisher", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued event was published or given up on; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def release_connections(self, timeout: float = 10.0) -> None:
        """Have the publisher thread close its database connections now (they would close after
        :attr:`idle_release` seconds of idleness anyway). For test teardown and shutdown."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return
            self._release = True
            self._cond.notify_all()
            deadline = time.monotonic() + timeout
            while self._release and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def reset_transport(self) -> None:
        """Build the transport anew, from the current settings, before the next batch. Safe to
        call from any thread: only the publisher thread touches the transport."""
        self._stale = True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._release:
                        _close_db_connections()
                        self._release = False
                        self._cond.notify_all()
                    elif not _holds_db_connections():
                        self._cond.wait()
                    elif not self._cond.wait(self.idle_release) and not self._queue:
                        # Idle: a database connection held by this thread (marking outbox rows)
                        # would outlive the request cycle that closes the others (and block
                        # dropping a test database).
                        _close_db_connections()
                taken: list[Batch] = []
                size = 0
                limit = max(1, int(conf.get("DBEVENTS_PUBLISH_BATCH_SIZE")))
                while self._queue and (not taken or size + len(self._queue[0]) <= limit):
                    taken.append(self._queue.popleft())
                    size += len(taken[-1])
                self._current = taken
                self._busy = True
            try:
                self._deliver(taken)
            except Exception:  # never let the thread die: later batches still need it
                logger.exception("dbevents: the publisher failed on %d event(s): %s", size,
                                 "; ".join(b.describe() for b in taken))
            finally:
                with self._cond:
                    self._queued -= size
                    self._current = []
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, batches: list[Batch]) -> None:
        """Publish ``batches``: retry what is not confirmed, then give it up (direct) or leave it
        to the relay (outbox); mark what went out."""
        messages: list[Message] = []
        for batch in batches:
            if batch.messages is not None:
                messages.extend(batch.messages)
                continue
            try:
                messages.extend(encode(batch.events, alias=batch.alias))
            except Exception:
                logger.exception("dbevents: the events of a transaction cannot be serialized for the broker; "
                                 "events lost: %s", describe_events(batch.events))
        pending = messages
        attempts = max(1, int(conf.get("DBEVENTS_PUBLISH_RETRIES")))
        delay = float(conf.get("DBEVENTS_PUBLISH_RETRY_DELAY"))
        done: list[Message] = []
        returned: list[tuple[Message, str]] = []
        for attempt in range(1, attempts + 1):
            result = self._publish(pending)
            done.extend(result.confirmed)
            returned.extend(result.returned)
            pending = result.failed
            if not pending:
                break
            exc = result.error
            why = f"{type(exc).__name__}: {exc}" if exc is not None else "not confirmed"
            if attempt == attempts or self._stopping:
                self._give_up(pending, [], f"publishing failed after {attempt} attempt(s) ({why})", exc)
                self._hand_to_relay(pending, why)
                break
            logger.warning(
                "dbevents: %d of %d event(s) not confirmed by the broker (attempt %d of %d, %s); retrying in %.1fs",
                len(pending), len(messages), attempt, attempts, why, delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, float(conf.get("DBEVENTS_PUBLISH_RETRY_MAX_DELAY")))
        if done:
            logger.debug("dbevents: published %d event(s)", len(done))
        record(done, returned)

    def _hand_to_relay(self, messages: list[Message], why: str) -> None:
        """End this process's lease on outbox rows it could not publish, so that a relay takes
        them at their next back-off instead of after DBEVENTS_OUTBOX_LEASE."""
        in_outbox = [m for m in messages if m.outbox_id is not None]
        if not in_outbox:
            return
        from dbevents import outbox

        try:
            outbox.release(in_outbox, why)
        except Exception:
            logger.exception("dbevents: could not hand %d outbox row(s) to the relay; it takes them when "
                             "their lease (DBEVENTS_OUTBOX_LEASE) ends", len(in_outbox))

    def _give_up(self, messages: list[Message] | None, events: list[Event], why: str,
                 exc: BaseException | None = None) -> None:
        in_outbox = [m for m in messages or () if m.outbox_id is not None]
        lost = [m.describe() for m in messages or () if m.outbox_id is None] + [e.describe() for e in events]
        if in_outbox:
            # Not lost: the rows say which; the log names the first ones.
            more = f" ... and {len(in_outbox) - 50} more" if len(in_outbox) > 50 else ""
            logger.warning("dbevents: %s; %d event(s) stay in the outbox for dbevents_relay: %s%s",
                           why, len(in_outbox), ", ".join(m.describe() for m in in_outbox[:50]), more)
        if lost:
            logger.error("dbevents: %s; events lost: %s", why, ", ".join(lost),
                         exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)

    def _publish(self, messages: list[Message]) -> PublishResult:
        if self._stale:
            self._stale = False
            self._sender.reset()
        return self._sender.publish(messages)

    def shutdown(self) -> None:
        """At interpreter exit: give queued events DBEVENTS_SHUTDOWN_TIMEOUT to go out, then
        log the ids of those that did not."""
        if not self.wait(conf.get("DBEVENTS_SHUTDOWN_TIMEOUT")):
            self._stopping = True
            with self._cond:
                left = list(self._current) + list(self._queue)
            count = sum(len(b) for b in left)
            for batch in left:
                self._give_up(batch.messages, batch.events if batch.messages is None else [],
                              f"exiting with {count} unpublished event(s)")
        self.release_connections(2.0)


def log_returned(returned: Sequence[tuple[Message, str]]) -> None:
    """One ERROR per reason: the broker returned these messages as unroutable."""
    by_reason: dict[str, list[str]] = {}
    for message, reason in returned:
        by_reason.setdefault(reason, []).append(message.describe())
    for reason, ids in by_reason.items():
        logger.error("dbevents: the broker returned %d event(s) as unroutable (%s); nobody received: %s "
                     "(bind a queue first, or set DBEVENTS_PUBLISH_MANDATORY = False)", len(ids), reason,
                     ", ".join(ids))


def _holds_db_connections() -> bool:
    """Whether this thread has a database connection open (it marked outbox rows)."""
    from django.db import connections

    return any(conn.connection is not None for conn in connections.all(initialized_only=True))


def _close_db_connections() -> None:
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()


_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def dispatcher() -> Dispatcher:
    """The process's dispatcher (created on first use, and anew in a forked child)."""
    global _dispatcher
    if _dispatcher is None:
        with _dispatcher_lock:
            if _dispatcher is None:
                _dispatcher = Dispatcher()
    return _dispatcher


def publish(events: list[Event], *, alias: str | None = None, messages: list[Message] | None = None) -> None:
    """Hand a committed transaction's events to the active sinks and/or the broker.

    ``messages`` are the events as written to the outbox (same order), when they were.
    """
    if not events:
        return
    for sink in runtime.sinks.get():
        sink.receive(events)
    if publishing():
        dispatcher().submit(events, alias=alias, messages=messages)


def publishing() -> bool:
    """Whether committed events go to the broker here (not when a testing sink keeps them)."""
    return all(sink.publish for sink in runtime.sinks.get())


def wait(timeout: float | None = None) -> bool:
    """Wait until the events committed so far were published (or logged as lost / left to the
    relay). Useful in scripts, tests and management commands; returns False on timeout."""
    return dispatcher().wait(timeout)


@conf.on_reload
def _reload() -> None:
    _codec.cache_clear()
    if _dispatcher is not None:
        _dispatcher.reset_transport()


def _after_fork() -> None:
    global _dispatcher
    # The parent's thread and broker connection do not exist in the child.
    _dispatcher = None


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _at_exit() -> None:
    if _dispatcher is not None:
        _dispatcher.shutdown()
