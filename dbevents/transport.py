"""The transport seam: what puts a batch of encoded messages on the broker (:class:`Transport`,
:class:`PublishResult`), the default :class:`NamekoTransport` -- nameko's wire format over one
long-lived AMQP connection with publisher confirms (framing in :mod:`dbevents.framing`) -- and the
:class:`Sender` the publisher thread and the relay publish through.
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from django.utils.module_loading import import_string

from dbevents import conf, framing
from dbevents.events import HEADER_EVENT_ID, Message, encode, headers_json
from dbevents.framing import encode_publish

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
    #: Not published, for a reason of their own that a retry of the batch would not fix (their
    #: exchange cannot be declared): the other messages of the batch went out regardless.
    rejected: list[tuple[Message, str]] = field(default_factory=list)


def describe_error(exc: BaseException | None) -> str:
    """``"<type>: <message>"`` of a broker error for log lines and the outbox's ``last_error``,
    with every fragment of the configured AMQP URI taken out."""
    if exc is None:
        return "not confirmed"
    return conf.redact(f"{type(exc).__name__}: {exc}")


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
        problem = conf.uri_problem(self.uri)
        if problem:
            raise RuntimeError(f"dbevents: {problem}")
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
        options: dict[str, Any] = {"confirm_publish": False, "read_timeout": confirm_timeout,
                                   "write_timeout": confirm_timeout}
        socket_settings = _socket_settings(confirm_timeout)
        if socket_settings:
            options["socket_settings"] = socket_settings
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
            transport_options=options,
        )
        try:
            # One attempt: retrying (with back-off and logging) is the caller's job.
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            self.connection = connection
            self._open_channel()
        except BaseException:
            self.connection = None
            _abandon(connection)
            raise
        self._declared.clear()
        # No URI here, not even masked: log lines never carry a fragment of it.
        logger.debug("dbevents: connected to the broker")

    def _open_channel(self) -> None:
        """A channel with publisher confirms and returns (again after the broker closed one)."""
        assert self.connection is not None
        channel = self.connection.channel()
        self.confirms = hasattr(channel, "confirm_select")
        if self.confirms:
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
        if hasattr(channel, "events"):
            channel.events["basic_return"].add(self._on_return)
        self.channel = channel
        self._tag = 0

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            _close_quietly(connection)

    def _abandon(self) -> None:
        """Drop a connection that failed, without the closing handshake a stalled broker would
        make us wait another read timeout for."""
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            _abandon(connection)

    def _declare(self, services: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
        """The exchange of each service, declared once per connection; and the services whose
        exchange cannot be declared (e.g. PRECONDITION_FAILED: declared elsewhere with other
        arguments), with the broker's reason. The broker closes the channel on such an error:
        a new one is opened, so the other exchanges' messages still go out."""
        from amqp.exceptions import ChannelError
        from nameko.standalone.events import get_event_exchange

        names: dict[str, str] = {}
        rejected: dict[str, str] = {}
        for service in services:
            exchange = self._exchanges.get(service)
            if exchange is None:
                exchange = self._exchanges[service] = get_event_exchange(service, self.config)
            if exchange.name not in self._declared:
                try:
                    exchange(self.channel).declare()   # a no-op when DECLARE_EVENT_EXCHANGES is False
                except ChannelError as exc:
                    rejected[service] = conf.redact(f"the exchange {exchange.name!r} cannot be declared "
                                                    f"({type(exc).__name__}: {getattr(exc, 'reply_text', exc)})")
                    self._open_channel()
                    continue
                self._declared.add(exchange.name)
            names[service] = str(exchange.name)
        return names, rejected

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
        """Publish ``messages`` in order, at most ``DBEVENTS_MAX_IN_FLIGHT`` unconfirmed at a time,
        and wait for their confirms."""
        result = PublishResult()
        self._outstanding.clear()
        self._acked.clear()
        self._nacked.clear()
        self._returned.clear()
        rejected: dict[str, str] = {}
        try:
            if self.connection is None:
                self._connect()
            exchanges, rejected = self._declare(list(dict.fromkeys(m.service_name for m in messages)))
            mandatory = bool(conf.get("DBEVENTS_PUBLISH_MANDATORY"))
            if self.confirms:
                self._publish_pipelined(messages, exchanges, mandatory)
            else:
                channel = self.channel
                for index, message in enumerate(messages):
                    exchange = exchanges.get(message.service_name)
                    if exchange is None:
                        continue
                    amqp_message = channel.prepare_message(
                        message.body, 0, message.content_type, message.content_encoding,
                        message.headers, {"delivery_mode": 2},
                    )
                    channel.basic_publish(amqp_message, exchange=exchange, routing_key=message.routing_key,
                                          mandatory=mandatory)
                    self._acked.add(index)
        except Exception as exc:  # the connection is unusable: what is unconfirmed has failed
            result.error = exc
            self._abandon()
        for index, message in enumerate(messages):
            reason = self._returned.get(message.event_id)
            if message.service_name in rejected:
                result.rejected.append((message, rejected[message.service_name]))
            elif reason is not None:   # it reached the broker, which had nowhere to route it
                result.returned.append((message, reason))
            elif index in self._acked:
                result.confirmed.append(message)
            else:
                result.failed.append(message)
        if self._nacked and result.error is None:
            result.error = RuntimeError(f"the broker rejected (nack) {len(self._nacked)} message(s)")
        self._outstanding.clear()
        return result

    def _publish_pipelined(self, messages: Sequence[Message], exchanges: dict[str, str], mandatory: bool) -> None:
        """AMQP 0-9-1 over py-amqp: frames encoded here, many messages per socket write, and no
        more than ``DBEVENTS_MAX_IN_FLIGHT`` unconfirmed: beyond it a slow broker's TCP
        back-pressure would only pile up data that a broken connection makes us publish again."""
        assert self.connection is not None
        write = self.connection.connection.transport.write  # type: ignore[attr-defined]
        frame_max = int(self.connection.connection.frame_max)  # type: ignore[attr-defined]
        channel_id = self.channel.channel_id
        in_flight = int(conf.get("DBEVENTS_MAX_IN_FLIGHT"))
        pending: list[bytes] = []
        size = 0
        for index, message in enumerate(messages):
            exchange = exchanges.get(message.service_name)
            if exchange is None:
                continue
            frames = framing.encode_publish(channel_id, exchange, message, mandatory, frame_max)
            pending.append(frames)
            size += len(frames)
            self._tag += 1
            self._outstanding[self._tag] = index
            if size >= framing.WRITE_CHUNK or len(self._outstanding) >= in_flight:
                write(b"".join(pending))
                pending, size = [], 0
                if len(self._outstanding) >= in_flight:
                    self._wait_for_confirms(down_to=in_flight // 2)
        if pending:
            write(b"".join(pending))
        self._wait_for_confirms()

    def _wait_for_confirms(self, down_to: int = 0) -> None:
        """Read confirms until at most ``down_to`` are outstanding. Raises TimeoutError when none
        arrives for ``DBEVENTS_CONFIRM_TIMEOUT`` seconds."""
        assert self.connection is not None
        timeout = float(conf.get("DBEVENTS_CONFIRM_TIMEOUT"))
        deadline = time.monotonic() + timeout
        while len(self._outstanding) > down_to:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the broker confirmed none of {len(self._outstanding)} outstanding "
                                   f"message(s) for {timeout:g}s (DBEVENTS_CONFIRM_TIMEOUT)")
            before = len(self._outstanding)
            try:
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                continue  # the deadline check above raises
            if len(self._outstanding) < before:
                deadline = time.monotonic() + timeout


def _socket_settings(confirm_timeout: float) -> dict[int, int]:
    """TCP options for the broker connection: ``TCP_USER_TIMEOUT`` from
    ``DBEVENTS_TCP_USER_TIMEOUT`` (default: the confirm timeout) instead of py-amqp's 1 s,
    which drops the connection whenever a slow broker's TCP back-pressure lasts a second."""
    import socket

    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None:   # not Linux
        return {}
    value = conf.get("DBEVENTS_TCP_USER_TIMEOUT")
    seconds = confirm_timeout if value is None else float(value)
    return {option: int(seconds * 1000)}


def _abandon(connection: Any) -> None:
    """Release a broken broker connection's socket without a closing handshake."""
    try:
        connection.collect()
    except Exception as exc:
        logger.debug("dbevents: releasing a broken broker connection: %s", describe_error(exc))


def _close_quietly(connection: Any) -> None:
    """Close a broker connection that is being abandoned (it may already be broken)."""
    try:
        connection.close()
    except Exception as exc:  # already broken: nothing left to release but the socket
        logger.debug("dbevents: closing a broken broker connection: %s", describe_error(exc))
        try:
            connection.collect()
        except Exception as again:
            logger.debug("dbevents: releasing a broken broker connection: %s", describe_error(again))


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
__all__ = ["Message", "NamekoTransport", "PublishResult", "Sender", "Transport", "describe_error", "encode",
           "encode_publish", "headers_json"]


def __getattr__(name: str) -> Any:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"dbevents.transport.{name} moved to {home}.{name}", DeprecationWarning, stacklevel=2)
    # Looked up by name, not imported: the publisher imports this module, not the other way round.
    return getattr(importlib.import_module(home), name)
