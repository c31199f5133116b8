"""The outbox relay: publishes what the committing processes left in the outbox.

Rows are left behind when the broker was down or slow, or the process died between COMMIT and
the broker's confirm. :class:`Relay` claims available rows in ``id`` order, publishes them as one
pipelined batch, marks the confirmed ones sent and gives the others back with a back-off. It
never gives up on a row. Run it with ``manage.py dbevents_relay`` (see the README for production
set-ups with several workers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from django.db import connections, router

from dbevents import conf, leases, outbox, status
from dbevents.delivery import after_publish
from dbevents.events import Message, describe_events
from dbevents.owners import default_worker_id, owner_is_dead
from dbevents.transport import PublishResult, Sender, describe_error

logger = logging.getLogger("dbevents")


def outbox_aliases() -> list[str]:
    """The databases that have an outbox: those with a dbevents ENGINE where the router lets
    the dbevents app migrate."""
    from dbevents.capture import CaptureMixin
    from dbevents.models import OutboxMessage

    return [c.alias for c in connections.all() if isinstance(c, CaptureMixin)
            and router.allow_migrate_model(c.alias, OutboxMessage)]


def chosen_aliases(requested: Sequence[str] | None) -> list[str]:
    """The outbox databases a command works on: ``requested`` (its ``--database`` options), or
    all of them. Raises ValueError naming an alias that has no outbox."""
    known = outbox_aliases()
    unknown = sorted(set(requested or ()) - set(known))
    if unknown:
        raise ValueError(f"--database {', '.join(unknown)}: no outbox there (databases with a dbevents "
                         f"ENGINE where the dbevents app migrates: {known or 'none'}).")
    return list(requested) if requested else known


class Relay:
    """Publishes available outbox rows of ``aliases`` until :meth:`stop` is called.

    ``worker_id`` names this relay in the rows it leases. Given explicitly (e.g. a systemd
    instance name), a restarted relay takes back at once the rows its previous run leased;
    otherwise those wait for their lease (``DBEVENTS_OUTBOX_LEASE``) to expire.
    """

    def __init__(self, aliases: Sequence[str] | None = None, *, worker_id: str | None = None,
                 batch_size: int = 1000, idle: float = 1.0, cleanup_interval: float = 300.0) -> None:
        self.aliases = list(aliases) if aliases is not None else outbox_aliases()
        self.explicit_id = worker_id is not None
        self.worker_id = worker_id or default_worker_id()
        self.batch_size = batch_size
        self.idle = idle
        self.cleanup_interval = cleanup_interval
        self.published = 0
        self.returned = 0
        #: Event publish attempts that failed (an event retried three times counts three).
        self.failed = 0
        #: Rows pending and not leased when a ``run(once=True)`` ended: it could not publish them.
        self.left = 0
        self._stop = threading.Event()
        self._sender = Sender()
        self._last_cleanup = 0.0
        self._last_reclaim = 0.0
        self._failing = 0   # consecutive publish attempts that published nothing
        self._ahead = _ClaimAhead()

    def stop(self) -> None:
        """Finish the batch in hand, then return from :meth:`run` (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, once: bool = False) -> None:
        """Relay until stopped. With ``once``: until no row is pending, waiting for rows in
        back-off; it gives up after ``DBEVENTS_PUBLISH_RETRIES`` failed attempts in a row and
        leaves the count of rows still pending in :attr:`left`."""
        if self.explicit_id:
            for alias in self.aliases:
                taken = leases.release_owner(alias, self.worker_id)
                if taken:
                    logger.info("dbevents relay %s: took back %d row(s) its previous run had leased on %r",
                                self.worker_id, taken, alias)
        try:
            while not self._stop.is_set():
                self._maybe_reclaim()
                handled = 0
                for alias in self.aliases:
                    if self._stop.is_set():
                        break
                    handled += self.relay_once(alias)
                self._maybe_cleanup()
                gave_up = once and self._failing >= int(conf.get("DBEVENTS_PUBLISH_RETRIES"))
                if handled and not gave_up:
                    continue
                if once:
                    if gave_up:
                        # What is leased is in a live publisher's hands; the rest this run failed on.
                        self._drop_ahead()
                        self.left = sum(s["pending"] - s["leased"] for s in map(status.stats, self.aliases))
                        break
                    wait = self._backoff_wait()
                    if wait is None:
                        # Nothing waits for a retry: what is left is leased by a live publisher,
                        # or queued behind an earlier event of its row that one holds (a relay
                        # takes it once that event is sent).
                        break
                    self._stop.wait(wait)
                    continue
                self._stop.wait(self.idle)
        finally:
            self.close()

    def _backoff_wait(self) -> float | None:
        """Seconds until the next row in back-off is due, or None when none waits."""
        due = [d for d in map(leases.next_due, self.aliases) if d is not None]
        return min(due) + 0.05 if due else None

    def _maybe_reclaim(self) -> None:
        """Every few seconds, take at once the rows leased by processes of this host that died
        (a crashed web worker, a killed relay) instead of waiting for their lease."""
        now = time.monotonic()
        if now - self._last_reclaim < min(5.0, float(conf.get("DBEVENTS_OUTBOX_LEASE")) / 4):
            return
        self._last_reclaim = now
        for alias in self.aliases:
            try:
                taken = leases.release_dead_owners(alias, owner_is_dead)
            except Exception:
                logger.exception("dbevents relay %s: cannot look for rows of crashed processes in the outbox "
                                 "of %r", self.worker_id, alias)
                continue
            if taken:
                logger.info("dbevents relay %s: took %d row(s) leased by processes of this host that no longer "
                            "exist on %r", self.worker_id, taken, alias)

    def relay_once(self, alias: str) -> int:
        """Claim one batch on ``alias`` and publish it; returns how many rows it handled.
        While a full batch is published, the next one is claimed on another thread (claim,
        publish and mark overlap). Database errors are logged and retried on the next round."""
        messages, stale = self._ahead.take(alias, max_age=float(conf.get("DBEVENTS_OUTBOX_LEASE")) / 2)
        if stale:   # claimed so long ago that its lease may run out while it is published
            self._release(stale, "", backoff=False)
        if not messages:   # nothing claimed ahead, or claimed before this batch went out: look again
            messages = self._claim(alias)
        if messages is None:
            self._stop.wait(self.idle)
            return 0
        if not messages:
            return 0
        if len(messages) == self.batch_size and leases.claims_concurrently(alias) and not self._stop.is_set():
            self._ahead.start(alias, self._claim)
        self._settle(self._sender.publish(messages))
        return len(messages)

    def _claim(self, alias: str) -> list[Message] | None:
        """One claim; None (logged) when the database failed. Runs on either thread."""
        try:
            return leases.claim(alias, self.worker_id, self.batch_size)
        except Exception:
            logger.exception("dbevents relay %s: cannot read the outbox of %r; retrying in %.1fs",
                             self.worker_id, alias, self.idle)
            connections[alias].close()   # this thread's connection: the next claim opens a new one
            return None

    def _settle(self, result: PublishResult) -> None:
        try:
            after_publish(result.confirmed, result.returned)
        finally:
            self.published += len(result.confirmed)
            self.returned += len(result.returned)
            went_out = bool(result.confirmed or result.returned)
            self._failing = 0 if went_out else self._failing + 1
            if result.failed:
                self.failed += len(result.failed)
                why = describe_error(result.error)
                logger.warning("dbevents relay %s: %d event(s) not confirmed by the broker (%s); they will be "
                               "retried with back-off: %s", self.worker_id, len(result.failed), why,
                               describe_events(result.failed))
                self._release(result.failed, why)
            by_reason: dict[str, list] = {}
            for message, reason in result.rejected:
                by_reason.setdefault(reason, []).append(message)
            for reason, messages in by_reason.items():
                self.failed += len(messages)
                logger.error("dbevents relay %s: %s; %d event(s) will be retried with back-off (the others "
                             "are not held up): %s", self.worker_id, reason, len(messages), describe_events(messages))
                self._release(messages, reason)
        if result.confirmed:
            logger.info("dbevents relay %s: published %d event(s)", self.worker_id, len(result.confirmed))

    def _maybe_cleanup(self) -> None:
        now = time.monotonic()
        if now - self._last_cleanup < self.cleanup_interval:
            return
        self._last_cleanup = now
        for alias in self.aliases:
            try:
                deleted = outbox.cleanup(alias)
            except Exception:
                logger.exception("dbevents relay %s: deleting sent rows from the outbox of %r failed",
                                 self.worker_id, alias)
                continue
            if deleted:
                logger.info("dbevents relay %s: deleted %d sent row(s) older than DBEVENTS_OUTBOX_RETENTION "
                            "from %r", self.worker_id, deleted, alias)

    def _release(self, messages: Sequence[Message], why: str, *, backoff: bool = True) -> None:
        """Give rows back (with back-off, or at once); a database failure is logged, and the rows
        are retried when their lease (``DBEVENTS_OUTBOX_LEASE``) ends."""
        try:
            leases.release(messages, why, owner=self.worker_id, backoff=backoff)
        except Exception:
            logger.exception("dbevents relay %s: could not give %d outbox row(s) back; they are retried when "
                             "their lease ends: %s", self.worker_id, len(messages), describe_events(messages))

    def _drop_ahead(self) -> None:
        """Give back the batches claimed ahead (never attempted): available again at once."""
        left = self._ahead.close()
        if left:
            self._release(left, "", backoff=False)

    def close(self) -> None:
        try:
            self._drop_ahead()
        finally:
            self._sender.reset()
            for alias in self.aliases:
                connections[alias].close()


class _ClaimAhead:
    """The next batch of each outbox, claimed on a thread (and database connection) of its own
    while the relay publishes the current batch."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[str, Future[tuple[list[Message] | None, float]]] = {}

    def start(self, alias: str, claim: Callable[[str], list[Message] | None]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbevents-relay-claim")
        self._ahead[alias] = self._pool.submit(lambda: (claim(alias), time.monotonic()))

    def take(self, alias: str, max_age: float) -> tuple[list[Message] | None, list[Message]]:
        """The batch claimed ahead for ``alias`` ([] if none), and instead, when it was claimed
        more than ``max_age`` seconds ago, ([], that batch) for the caller to give back."""
        future = self._ahead.pop(alias, None)
        if future is None:
            return [], []
        messages, claimed_at = future.result()
        if messages and time.monotonic() - claimed_at > max_age:
            return [], messages
        return messages, []

    def close(self) -> list[Message]:
        """Stop the thread (closing its connections); returns what it claimed and nobody published."""
        left = [m for future in self._ahead.values() for m in future.result()[0] or ()]
        self._ahead.clear()
        if self._pool is not None:
            self._pool.submit(connections.close_all).result()
            self._pool.shutdown()
            self._pool = None
        return left
