"""The publisher: puts committed events on the broker without making the committing request wait.

:func:`publish` is called after COMMIT. It gives the events to any active testing sink and
queues them for the process's publisher thread (:class:`Publisher`), which takes everything
queued as one batch and has :mod:`dbevents.delivery` publish it through the transport
(:mod:`dbevents.transport`: nameko's wire format over one long-lived AMQP connection with
publisher confirms by default): what is not confirmed is retried with back-off, then either
logged as lost (``direct`` delivery) or left in the outbox for ``dbevents_relay`` (``outbox``
delivery). A broker that is down or slow therefore never fails or blocks a request.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque

from dbevents import conf, outbox, runtime
from dbevents.delivery import Delivery
from dbevents.events import Committed, Message, describe_events

logger = logging.getLogger("dbevents")


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
        self._delivery = Delivery()
        self._current: list[Committed] = []   # the batches being published
        self._release = False
        self._to_release: list[Message] = []   # outbox rows to hand to the relay (queue full)
        self._first_queued = 0.0                # when the oldest queued transaction arrived
        self._waiters = 0                       # threads in wait(): no lingering for them

    def submit(self, batch: Committed) -> None:
        """Queue a committed transaction's events; returns at once. A transaction is taken
        whatever its size when nothing else waits (it is in memory already; the thread publishes
        it in chunks of ``DBEVENTS_PUBLISH_BATCH_SIZE``); beyond ``DBEVENTS_QUEUE_SIZE`` queued
        events, outbox rows are handed to the relay and direct events are logged as lost."""
        with self._cond:
            limit = conf.get("DBEVENTS_QUEUE_SIZE")
            # A transaction written to the outbox in chunks holds one chunk in memory: always taken.
            if self._queue and self._queued + batch.in_memory > limit and not batch.spilled:
                why = f"the publish queue is full ({self._queued} events, DBEVENTS_QUEUE_SIZE={limit})"
                if batch.messages is not None:
                    logger.warning("dbevents: %s; %d event(s) are left to dbevents_relay: %s", why, len(batch),
                                   batch.describe())
                    self._to_release.extend(batch.messages)
                    self._wake()
                else:
                    logger.error("dbevents: %s; %d event(s) lost: %s", why, len(batch), batch.describe())
                return
            if not self._queue:
                self._first_queued = time.monotonic()
            self._queue.append(batch)
            self._queued += batch.in_memory
            self._wake()

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="dbevents-publisher", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued event was published or given up on; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()   # a lingering publisher goes at once
            try:
                while self._queue or self._busy or self._to_release:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._waiters -= 1
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
        self._delivery.stale = True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._to_release:
                    if self._release:
                        outbox.close_connections()
                        self._release = False
                        self._cond.notify_all()
                    elif not outbox.holds_connections():
                        self._cond.wait()
                    elif not self._cond.wait(self.idle_release) and not self._queue:
                        # Idle: a database connection held by this thread (marking outbox rows)
                        # would outlive the request cycle that closes the others (and block
                        # dropping a test database).
                        outbox.close_connections()
                limit = int(conf.get("DBEVENTS_PUBLISH_BATCH_SIZE"))
                self._linger(limit)
                to_release, self._to_release = self._to_release, []
                taken = self._take(limit)
                size = sum(b.in_memory for b in taken)
                self._current = taken
                self._busy = True
            try:
                if to_release:
                    self._delivery.hand_to_relay(to_release, "the publish queue was full", backoff=False)
                if taken:
                    self._delivery.deliver(taken)
            except Exception:  # never let the thread die: later batches still need it
                logger.exception("dbevents: the publisher failed on %d event(s): %s", size,
                                 describe_events([m for b in taken for m in (b.messages or b.events)]))
            finally:
                with self._cond:
                    self._queued -= size
                    self._current = []
                    self._busy = False
                    self._cond.notify_all()

    def _linger(self, limit: int) -> None:
        """Under the lock, with something queued: let more transactions join the batch for up
        to ``DBEVENTS_PUBLISH_LINGER`` after the oldest arrived (fewer, larger batches: less work
        per event while transactions keep coming), unless the batch is full, a thread waits in
        :meth:`wait`, or the process is stopping."""
        deadline = self._first_queued + float(conf.get("DBEVENTS_PUBLISH_LINGER"))
        while (self._queue and self._queued < limit and not self._waiters and not self._delivery.stopping
               and not self._release and (left := deadline - time.monotonic()) > 0):
            self._cond.wait(left)

    def _take(self, limit: int) -> list[Committed]:
        """Queued batches up to ``limit`` events, a larger transaction split in chunks of it."""
        taken: list[Committed] = []
        size = 0
        queue = self._queue
        while queue and size < limit:
            batch = queue[0]
            room = limit - size
            if len(batch) > room:
                if taken:
                    break
                batch, queue[0] = batch.split(room)
            else:
                queue.popleft()
            taken.append(batch)
            size += len(batch)
        return taken

    def shutdown(self) -> None:
        """At interpreter exit: give queued events DBEVENTS_SHUTDOWN_TIMEOUT to go out; then hand
        the outbox rows of what is still queued to the relay at once (one WARNING), and log the
        ids of direct events that are lost (one ERROR)."""
        if not self.wait(conf.get("DBEVENTS_SHUTDOWN_TIMEOUT")):
            self._delivery.stopping = True   # the batch in hand gives up after its current attempt
            with self._cond:
                # The batch in hand too: were it confirmed meanwhile, the relay would publish it
                # again (a duplicate, never a loss), instead of its rows waiting for their lease.
                left = list(self._current) + list(self._queue)
                self._queue.clear()
                self._queued = sum(b.in_memory for b in self._current)
                refused, self._to_release = self._to_release, []   # queue was full: not queued at all
            messages = refused + [m for b in left for m in b.messages or ()]
            events = [e for b in left if b.messages is None for e in b.events]
            spilled = [b for b in left if b.spilled]
            count = len(messages) + sum(len(b.spilled) for b in spilled)
            why = f"exiting with {count + len(events)} unpublished event(s)"
            if count:
                logger.warning("dbevents: %s; %d event(s) are handed to dbevents_relay: %s", why, count,
                               "; ".join([b.describe() for b in spilled] + [describe_events(messages)] * bool(messages)))
                left_why = "the process exited before publishing them"
                self._delivery.hand_to_relay(messages, left_why, backoff=False)
                for b in spilled:
                    self._delivery.release_rows(b.alias or "default", b.spilled, left_why, False, b.describe())
            if events:
                logger.error("dbevents: %s; %d event(s) lost (direct delivery): %s", why, len(events),
                             describe_events(events))
        self.release_connections(2.0)


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
    if not len(committed):
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
