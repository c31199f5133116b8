"""Transport: hands committed events to the broker without making the committing request wait.

:func:`publish` is called after COMMIT. It gives the events to any active testing sink and
queues them for a background publisher thread, which sends them through a :class:`Transport`
(nameko's wire format over AMQP by default), retries with backoff, and logs the ids of events it
could not deliver. A broker that is down or slow therefore never fails or blocks a request.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Protocol

from django.utils.module_loading import import_string

from dbevents import conf, runtime
from dbevents.events import Event

logger = logging.getLogger("dbevents")


class Transport(Protocol):
    """Sends a batch of events. Raises when any of them may not have reached the broker;
    the dispatcher then retries the whole batch (consumers de-duplicate by event id)."""

    def publish(self, events: list[Event]) -> None: ...

    def close(self) -> None: ...


class NamekoTransport:
    """Publishes exactly as nameko's standalone event dispatcher does -- exchange
    ``<service>.events`` built by nameko's ``get_event_exchange``, routing key = event name,
    body in nameko's configured serializer, persistent delivery, publisher confirms -- and
    declares the exchange first, so no event is dropped because no consumer declared it yet.

    Reads ``NAMEKO_CONFIG`` (``AMQP_URI`` -- or the top-level ``AMQP_URI`` --, ``SERIALIZER``,
    ``SERIALIZERS``, ``AMQP_SSL``, ``LOGIN_METHOD``, ``AUTO_DELETE_EVENT_EXCHANGES``,
    ``DECLARE_EVENT_EXCHANGES``). ``memory://`` works too (kombu's in-process broker).
    """

    def __init__(self) -> None:
        from nameko import serialization
        from nameko.amqp.publish import Publisher

        self.config = conf.nameko_config()
        uri = self.config.get("AMQP_URI")
        if not uri:
            raise RuntimeError("dbevents: no AMQP_URI in NAMEKO_CONFIG nor in settings (see check dbevents.E007)")
        serializer, _ = serialization.setup(self.config)
        self.publisher = Publisher(
            uri,
            serializer=serializer,
            ssl=self.config.get("AMQP_SSL"),
            login_method=self.config.get("LOGIN_METHOD"),
            # One quick reconnect inside kombu (a pooled connection may have gone stale);
            # the dispatcher does the real retrying, with backoff and logging.
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
        )
        self._exchanges: dict[str, Any] = {}

    def _exchange(self, service_name: str) -> Any:
        exchange = self._exchanges.get(service_name)
        if exchange is None:
            from nameko.standalone.events import get_event_exchange

            exchange = self._exchanges[service_name] = get_event_exchange(service_name, self.config)
        return exchange

    def publish(self, events: list[Event]) -> None:
        for event in events:
            exchange = self._exchange(event.service_name)
            self.publisher.publish(
                event.payload,
                exchange=exchange,
                routing_key=event.name,
                headers=dict(event.headers),
                declare=[exchange],
            )

    def close(self) -> None:
        # Connections stay in kombu's pool (keyed by URI and options), where a broken one is
        # re-established by the next publish; nothing of other kombu users is touched.
        self._exchanges.clear()


class Dispatcher:
    """A queue of committed batches and the thread that publishes them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[list[Event]] = deque()
        self._queued = 0
        self._busy = False
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None
        self._stale = False
        self._current: list[Event] = []   # the batch being published

    def submit(self, events: list[Event]) -> None:
        """Queue a committed transaction's events; returns at once."""
        with self._cond:
            limit = conf.get("DBEVENTS_QUEUE_SIZE")
            if self._queued + len(events) > limit:
                logger.error(
                    "dbevents: publish queue is full (%d events, DBEVENTS_QUEUE_SIZE=%d); events lost: %s",
                    self._queued, limit, _ids(events),
                )
                return
            self._queue.append(events)
            self._queued += len(events)
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

    def reset_transport(self) -> None:
        """Build the transport anew, from the current settings, before the next batch. Safe to
        call from any thread: only the publisher thread touches the transport."""
        self._stale = True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch = self._queue.popleft()
                self._current = batch
                self._busy = True
            try:
                self._deliver(batch)
            finally:
                with self._cond:
                    self._queued -= len(batch)
                    self._current = []
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, batch: list[Event]) -> None:
        attempts = max(1, int(conf.get("DBEVENTS_PUBLISH_RETRIES")))
        delay = float(conf.get("DBEVENTS_PUBLISH_RETRY_DELAY"))
        for attempt in range(1, attempts + 1):
            try:
                self._publish(batch)
            except Exception as exc:
                if attempt == attempts:
                    logger.error(
                        "dbevents: could not publish %d event(s) after %d attempt(s) (%s: %s); events lost: %s",
                        len(batch), attempts, type(exc).__name__, exc, _ids(batch), exc_info=True,
                    )
                    return
                logger.warning(
                    "dbevents: publishing %d event(s) failed (attempt %d of %d, %s: %s); retrying in %.1fs",
                    len(batch), attempt, attempts, type(exc).__name__, exc, delay,
                )
                self._stale = True
                time.sleep(delay)
                delay = min(delay * 2, float(conf.get("DBEVENTS_PUBLISH_RETRY_MAX_DELAY")))
            else:
                logger.debug("dbevents: published %d event(s): %s", len(batch), _ids(batch))
                return

    def _publish(self, batch: list[Event]) -> None:
        if self._stale and self._transport is not None:
            transport, self._transport = self._transport, None
            try:
                transport.close()
            except Exception:
                logger.exception("dbevents: closing the previous transport failed; continuing with a new one")
        self._stale = False
        if self._transport is None:
            self._transport = import_string(conf.get("DBEVENTS_TRANSPORT"))()
        self._transport.publish(batch)

    def shutdown(self) -> None:
        """At interpreter exit: give queued events DBEVENTS_SHUTDOWN_TIMEOUT to go out, then
        log the ids of those that did not."""
        if not self.wait(conf.get("DBEVENTS_SHUTDOWN_TIMEOUT")):
            with self._cond:
                left = list(self._current) + [e for batch in self._queue for e in batch]
            logger.error("dbevents: exiting with %d unpublished event(s); events lost: %s", len(left), _ids(left))


def _ids(events: list[Event]) -> str:
    return ", ".join(f"{e.id} ({e.name} {e.model} pk={e.pk})" for e in events)


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


def publish(events: list[Event]) -> None:
    """Hand a committed transaction's events to the active sinks and/or the broker."""
    if not events:
        return
    publish_too = True
    for sink in runtime.sinks.get():
        sink.receive(events)
        publish_too = publish_too and sink.publish
    if publish_too:
        dispatcher().submit(events)


def wait(timeout: float | None = None) -> bool:
    """Wait until the events committed so far were published (or logged as lost).

    Useful in scripts, tests and management commands; returns False on timeout.
    """
    return dispatcher().wait(timeout)


@conf.on_reload
def _reload() -> None:
    if _dispatcher is not None:
        _dispatcher.reset_transport()


def _after_fork() -> None:
    global _dispatcher
    # The parent's thread and broker connections do not exist in the child.
    _dispatcher = None
    from kombu import pools

    pools.reset()


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _at_exit() -> None:
    if _dispatcher is not None:
        _dispatcher.shutdown()
