"""Publishing one batch of committed transactions: in commit order per row, retried with back-off,
then given up (direct delivery: logged as lost) or left to ``dbevents_relay`` (outbox delivery),
and the outbox rows of what went out marked sent. Used by the publisher thread
(:mod:`dbevents.publisher`); :func:`after_publish` by the relay too."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dbevents import conf, leases, ordering, outbox, owners
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


class Delivery:
    """The publisher thread's way to the broker: its transport (only that thread touches it)
    and what it does with a batch."""

    def __init__(self) -> None:
        self._sender = Sender()
        self.stale = False      # build the transport anew before the next batch (settings changed)
        self.stopping = False   # the process exits: the batch in hand gives up after its attempt

    def deliver(self, batches: list[Committed]) -> None:
        """Publish ``batches``: retry what is not confirmed, then give it up (direct) or leave it
        to the relay (outbox); mark what went out. Per row, events go out in commit order
        (:mod:`dbevents.ordering`): an event whose row has an earlier event still unsent, or one
        that failed here, is left to the relay, which publishes them in order."""
        messages = ordering.commit_order(self._messages(batches))
        held = self._held_back(messages)
        if held:
            logger.info("dbevents: %d event(s) wait for earlier events of the same rows, which dbevents_relay "
                        "publishes first: %s", len(held), describe_events(held))
            self.hand_to_relay(held, "an earlier event of the same row was unsent", backoff=False)
            kept = {id(m) for m in held}
            messages = [m for m in messages if id(m) not in kept]
        done: list[Message] = []
        returned: list[tuple[Message, str]] = []
        failed_rows: set[str] = set()
        for run in ordering.segments(messages):
            behind = [m for m in run if m.outbox_id is not None and m.key in failed_rows]
            if behind:
                self.hand_to_relay(behind, "an earlier event of the same row failed", backoff=False)
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
            if attempt == attempts or self.stopping:
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

    def hand_to_relay(self, messages: list[Message], why: str, *, backoff: bool = True) -> None:
        """End this process's lease on outbox rows it does not publish, so that a relay takes
        them at once (or at their next back-off) instead of after DBEVENTS_OUTBOX_LEASE."""
        in_outbox = [m for m in messages if m.outbox_id is not None]
        for alias, ids in outbox.by_alias(in_outbox).items():
            self.release_rows(alias, ids, why, backoff, describe_events([m for m in in_outbox if m.alias == alias]))

    @staticmethod
    def release_rows(alias: str, ids: Sequence[int], why: str, backoff: bool, described: str) -> None:
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
            self.hand_to_relay(in_outbox, error)
        if lost:
            # ``error`` names the broker's error (redacted): its traceback could carry the URI.
            logger.error("dbevents: %s (%s); %d event(s) lost: %s", what, error, len(lost), describe_events(lost))

    def _publish(self, messages: list[Message]) -> PublishResult:
        if self.stale:
            self.stale = False
            self._sender.reset()
        return self._sender.publish(messages)
