"""The outbox relay: publishes what the committing processes left in the outbox.

Rows are left behind when the broker was down or slow, or the process died between COMMIT and
the broker's confirm. :class:`Relay` claims available rows in ``id`` order, publishes them as one
pipelined batch, marks the confirmed ones sent and gives the others back with a back-off. It
never gives up on a row. Run it with ``manage.py dbevents_relay`` (see the README for production
set-ups with several workers).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

from django.db import connections, router

from dbevents import outbox
from dbevents.publisher import after_publish
from dbevents.transport import PublishResult, Sender

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


def default_worker_id() -> str:
    return f"relay:{socket.gethostname()}:{os.getpid()}"


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
        self.failed = 0
        self._stop = threading.Event()
        self._sender = Sender()
        self._last_cleanup = 0.0

    def stop(self) -> None:
        """Finish the batch in hand, then return from :meth:`run` (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, once: bool = False) -> None:
        """Relay until stopped; with ``once``, until the outboxes have nothing available."""
        if self.explicit_id:
            for alias in self.aliases:
                taken = outbox.release_owner(alias, self.worker_id)
                if taken:
                    logger.info("dbevents relay %s: took back %d row(s) its previous run had leased on %r",
                                self.worker_id, taken, alias)
        try:
            while not self._stop.is_set():
                handled = sum(self.relay_once(alias) for alias in self.aliases)
                self._maybe_cleanup()
                if handled:
                    continue
                if once:
                    break
                self._stop.wait(self.idle)
        finally:
            self.close()

    def relay_once(self, alias: str) -> int:
        """Claim one batch on ``alias`` and publish it; returns how many rows it handled.
        Database errors are logged and retried on the next round."""
        try:
            messages = outbox.claim(alias, self.worker_id, self.batch_size)
        except Exception:
            logger.exception("dbevents relay %s: cannot read the outbox of %r; retrying in %.1fs",
                             self.worker_id, alias, self.idle)
            connections[alias].close()
            self._stop.wait(self.idle)
            return 0
        if not messages:
            return 0
        self._settle(self._sender.publish(messages))
        return len(messages)

    def _settle(self, result: PublishResult) -> None:
        try:
            after_publish(result.confirmed, result.returned)
        finally:
            self.published += len(result.confirmed)
            if result.failed:
                self.failed += len(result.failed)
                exc = result.error
                why = f"{type(exc).__name__}: {exc}" if exc is not None else "not confirmed"
                logger.warning("dbevents relay %s: %d event(s) not confirmed by the broker (%s); they will be "
                               "retried with back-off: %s", self.worker_id, len(result.failed), why,
                               ", ".join(m.describe() for m in result.failed[:50]))
                outbox.release(result.failed, why)
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

    def close(self) -> None:
        self._sender.reset()
        for alias in self.aliases:
            connections[alias].close()
