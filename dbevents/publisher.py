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

from dbevents import conf, leases, ordering, outbox, owners, runtime
from dbevents.events import Committed, Message, describe_events, encode_each
from dbevents.reporting import log_returned, log_unencodable
from dbevents.transport import PublishResult, Sender, describe_error

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
        self._to_release: list[Message] = []   # outbox rows to hand to the relay (queue full)

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
            while self._queue or self._busy or self._to_release:
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
                to_release, self._to_release = self._to_release, []
                taken = self._take(int(conf.get("DBEVENTS_PUBLISH_BATCH_SIZE")))
                size = sum(b.in_memory for b in taken)
                self._current = taken
                self._busy = True
            try:
                if to_release:
                    self._hand_to_relay(to_release, "the publish queue was full", backoff=False)
                if taken:
                    self._deliver(taken)
            except Exception:  # never let the thread die: later batches still need it
                logger.exception("dbevents: the publisher failed on %d event(s): %s", size,
                                 describe_events([m for b in taken for m in (b.messages or b.events)]))
            finally:
                with self._cond:
                    self._queued -= size
                    self._current = []
                    self._busy = False
                    self._cond.notify_all()

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

    def _deliver(self, batches: list[Committed]) -> None:
        """Publish ``batches``: retry what is not confirmed, then give it up (direct) or leave it
        to the relay (outbox); mark what went out. Per row, events go out in commit order
        (:mod:`dbevents.ordering`): an event whose row has an earlier event still unsent, or one
        that failed here, is left to the relay, which publishes them in order."""
        messages = ordering.commit_order(self._messages(batches))
        held = self._held_back(messages)
        if held:
            logger.info("dbevents: %d event(s) wait for earlier events of the same rows, which dbevents_relay "
                        "publishes first: %s", len(held), describe_events(held))
            self._hand_to_relay(held, "an earlier event of the same row was unsent", backoff=False)
            kept = {id(m) for m in held}
            messages = [m for m in messages if id(m) not in kept]
        done: list[Message] = []
        returned: list[tuple[Message, str]] = []
        failed_rows: set[str] = set()
        for run in ordering.segments(messages):
            behind = [m for m in run if m.outbox_id is not None and m.key in failed_rows]
            if behind:
                self._hand_to_relay(behind, "an earlier event of the same row failed", backoff=False)
                run = [m for m in run if m.outbox_id is None or m.key not in failed_rows]
            failed = self._send(run, done, returned)
            failed_rows.update(m.key for m in failed if m.outbox_id is not None)
        if done:
            logger.debug("dbevents: published %d event(s)", len(done))
        after_publish(done, returned)

    def _messages(self, batches: list[Committed]) -> list[Message]:
        """The messages of ``batches`` (direct events encoded here; those that cannot be are logged as lost)."""
        messages: list[Message] = []
        for batch in batches:
            if batch.spilled:
                messages.extend(self._read_back(batch))
            if batch.messages is not None:
                messages.extend(batch.messages)
                continue
            encoded, unencodable = encode_each(batch.events, alias=batch.alias)
            messages.extend(encoded)
            log_unencodable(unencodable, batch.alias, len(encoded), kept=False)
        return messages

    @staticmethod
    def _read_back(batch: Committed) -> list[Message]:
        """The events a large transaction wrote to the outbox before COMMIT, read back for
        publishing (those a relay took meanwhile are left to it)."""
        alias, ids = batch.alias, batch.spilled
        assert alias is not None
        try:
            return leases.take_own(alias, ids, owners.process_owner())
        except Exception:
            logger.exception("dbevents: could not read back %d event(s) of a large transaction from the outbox of "
                             "%r; dbevents_relay publishes them when their lease (DBEVENTS_OUTBOX_LEASE) ends: %s",
                             len(ids), alias, batch.describe())
            return []

    def _send(self, messages: list[Message], done: list[Message], returned: list[tuple[Message, str]]) -> list[Message]:
        """Publish ``messages`` with retries, adding what went out to ``done`` and ``returned``;
        returns what did not (given up, or rejected with its exchange)."""
        pending = messages
        failed: list[Message] = []
        attempts = max(1, int(conf.get("DBEVENTS_PUBLISH_RETRIES")))
        delay = float(conf.get("DBEVENTS_PUBLISH_RETRY_DELAY"))
        for attempt in range(1, attempts + 1):
            if not pending:
                break
            result = self._publish(pending)
            done.extend(result.confirmed)
            returned.extend(result.returned)
            self._reject(result.rejected)
            failed += [m for m, _ in result.rejected]
            pending = result.failed
            if not pending:
                break
            why = describe_error(result.error)
            if attempt == attempts or self._stopping:
                self._give_up(pending, f"publishing failed after {attempt} attempt(s)", why)
                return failed + pending
            logger.warning(
                "dbevents: %d of %d event(s) not confirmed by the broker (attempt %d of %d, %s); retrying in %.1fs",
                len(pending), len(messages), attempt, attempts, why, delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, float(conf.get("DBEVENTS_PUBLISH_RETRY_MAX_DELAY")))
        return failed

    def _held_back(self, messages: list[Message]) -> list[Message]:
        """The outbox messages of ``messages`` that an earlier unsent event of their row precedes."""
        if not any(m.outbox_id is not None for m in messages):
            return []
        try:
            return outbox.held_back(messages)
        except Exception:
            logger.exception("dbevents: could not check the outbox for earlier unsent events of %d event(s); "
                             "they are published now, possibly before an earlier event of the same row",
                             len(messages))
            return []

    def _reject(self, rejected: Sequence[tuple[Message, str]]) -> None:
        """Messages the broker cannot take as they are (their exchange cannot be declared): not
        retried here, where they would hold up every other event; the relay retries them with
        back-off, and what is unroutable or undeliverable on its own costs only itself."""
        by_reason: dict[str, list[Message]] = {}
        for message, reason in rejected:
            by_reason.setdefault(reason, []).append(message)
        for reason, messages in by_reason.items():
            self._give_up(messages, "the broker cannot take them", reason, level=logging.ERROR)

    def _hand_to_relay(self, messages: list[Message], why: str, *, backoff: bool = True) -> None:
        """End this process's lease on outbox rows it does not publish, so that a relay takes
        them at once (or at their next back-off) instead of after DBEVENTS_OUTBOX_LEASE."""
        in_outbox = [m for m in messages if m.outbox_id is not None]
        for alias, ids in outbox.by_alias(in_outbox).items():
            self._release_rows(alias, ids, why, backoff, describe_events([m for m in in_outbox if m.alias == alias]))

    @staticmethod
    def _release_rows(alias: str, ids: Sequence[int], why: str, backoff: bool, described: str) -> None:
        try:
            leases.release_ids(alias, ids, why, owner=owners.process_owner(), backoff=backoff)
        except Exception:
            logger.exception("dbevents: could not hand %d outbox row(s) of %r to the relay; it takes them when "
                             "their lease (DBEVENTS_OUTBOX_LEASE) ends: %s", len(ids), alias, described)

    def _give_up(self, messages: list[Message], what: str, error: str, *, level: int = logging.WARNING) -> None:
        """Not published here: outbox rows go to the relay (one line at ``level``; ``error`` becomes
        their ``last_error``), the rest is lost (one ERROR naming the first ids and the count)."""
        in_outbox = [m for m in messages if m.outbox_id is not None]
        lost = [m for m in messages if m.outbox_id is None]
        if in_outbox:
            logger.log(level, "dbevents: %s (%s); %d event(s) stay in the outbox for dbevents_relay: %s",
                       what, error, len(in_outbox), describe_events(in_outbox))
            self._hand_to_relay(in_outbox, error)
        if lost:
            # ``error`` names the broker's error (redacted): its traceback could carry the URI.
            logger.error("dbevents: %s (%s); %d event(s) lost: %s", what, error, len(lost), describe_events(lost))

    def _publish(self, messages: list[Message]) -> PublishResult:
        if self._stale:
            self._stale = False
            self._sender.reset()
        return self._sender.publish(messages)

    def shutdown(self) -> None:
        """At interpreter exit: give queued events DBEVENTS_SHUTDOWN_TIMEOUT to go out; then hand
        the outbox rows of what is still queued to the relay at once (one WARNING), and log the
        ids of direct events that are lost (one ERROR)."""
        if not self.wait(conf.get("DBEVENTS_SHUTDOWN_TIMEOUT")):
            self._stopping = True   # the batch in hand gives up after its current attempt
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
                self._hand_to_relay(messages, left_why, backoff=False)
                for b in spilled:
                    self._release_rows(b.alias or "default", b.spilled, left_why, False, b.describe())
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
