"""The publisher: puts committed events on the broker without making the committing request wait.

:func:`publish` is called after COMMIT. It gives the events to any active testing sink and
queues them for the process's publisher thread (:class:`Publisher`), which sends everything
queued as pipelined batches through the transport (:mod:`dbevents.transport`: nameko's wire
format over one long-lived AMQP connection with publisher confirms by default), retries what was
not confirmed with back-off, and then either logs the ids of the events it lost (``direct``
delivery) or leaves them in the outbox for ``dbevents_relay`` (``outbox`` delivery). A broker that
is down or slow therefore never fails or blocks a request.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence

from dbevents import conf, outbox, runtime
from dbevents.events import Committed, Event, Message, describe_events, encode
from dbevents.transport import PublishResult, Sender

logger = logging.getLogger("dbevents")


def after_publish(done: Sequence[Message], returned: Sequence[tuple[Message, str]]) -> None:
    """After a publish: log what the broker returned, and mark the outbox rows of confirmed and
    returned messages as sent."""
    if returned:
        log_returned(returned)
    if any(m.outbox_id is not None for m in done) or any(m.outbox_id is not None for m, _ in returned):
        outbox.mark_published(done, returned)


class Publisher:
    """The process's queue of committed batches and the one thread that publishes them.

    The thread (named ``dbevents-publisher``) takes everything queued (up to ``DBEVENTS_PUBLISH_BATCH_SIZE`` messages), publishes
    it in order as one pipelined batch, and retries what was not confirmed. Only this thread
    touches the transport, so its broker connection needs no locking; after ``fork()`` the child
    starts a publisher of its own.
    """

    #: Seconds of idleness after which the thread closes its database connections.
    idle_release = 2.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Committed] = deque()
        self._queued = 0
        self._busy = False
        self._thread: threading.Thread | None = None
        self._sender = Sender()
        self._stale = False
        self._current: list[Committed] = []   # the batches being published
        self._release = False
        self._stopping = False

    def submit(self, batch: Committed) -> None:
        """Queue a committed transaction's events; returns at once."""
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
                taken: list[Committed] = []
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

    def _deliver(self, batches: list[Committed]) -> None:
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
        after_publish(done, returned)

    def _hand_to_relay(self, messages: list[Message], why: str) -> None:
        """End this process's lease on outbox rows it could not publish, so that a relay takes
        them at their next back-off instead of after DBEVENTS_OUTBOX_LEASE."""
        in_outbox = [m for m in messages if m.outbox_id is not None]
        if not in_outbox:
            return
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


_publisher: Publisher | None = None
_lock = threading.Lock()


def current() -> Publisher:
    """The process's publisher (created on first use, and anew in a forked child)."""
    global _publisher
    if _publisher is None:
        with _lock:
            if _publisher is None:
                _publisher = Publisher()
    return _publisher


def publish(committed: Committed) -> None:
    """Hand a committed transaction's events to the active sinks and/or the broker."""
    if not committed.events:
        return
    for sink in runtime.sinks.get():
        sink.receive(committed.events)
    if publishing():
        current().submit(committed)


def publishing() -> bool:
    """Whether committed events go to the broker here (not when a testing sink keeps them)."""
    return all(sink.publish for sink in runtime.sinks.get())


def wait(timeout: float | None = None) -> bool:
    """Wait until the events committed so far were published (or logged as lost / left to the
    relay). Useful in scripts, tests and management commands; returns False on timeout."""
    return current().wait(timeout)


@conf.on_reload
def _reload() -> None:
    if _publisher is not None:
        _publisher.reset_transport()


def _after_fork() -> None:
    global _publisher
    # The parent's thread and broker connection do not exist in the child.
    _publisher = None


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _at_exit() -> None:
    if _publisher is not None:
        _publisher.shutdown()
