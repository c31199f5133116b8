"""Per-row order survives outages: the events of one row (model + pk) reach consumers in commit
order whichever publisher sends them -- the committing process, one relay or several, after any
back-off. Also: a crashed writer's rows are taken at once, ``dbevents_relay --once`` waits for
rows in back-off and says what it left, and an exiting process hands its backlog over at once."""

from __future__ import annotations

import io
import logging
import os
import random
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from dbevents import leases, ordering, outbox, owners, publisher
from dbevents.models import OutboxMessage
from dbevents.relay import Relay
from dbevents.testing import capture_events
from tests.faultproxy import FaultProxy
from tests.shop.models import Customer
from tests.test_outbox import backlog, broker_down

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]
ROOT = Path(__file__).resolve().parent.parent
IN_MEMORY_SQLITE = connection.vendor == "sqlite"


def per_row(received):
    """Each row's actions in the order their first copies arrived."""
    seen, actions = set(), {}
    for r in received:
        if r.headers["dbevents.event_id"] not in seen:
            seen.add(r.headers["dbevents.event_id"])
            actions.setdefault(r.pk, []).append(r.action)
    return actions


def test_an_update_waits_for_the_unsent_create_of_its_row(broker, caplog):
    with broker_down(), capture_events(publish=True):
        early = Customer.objects.create(name="created while the broker was down")
        assert publisher.wait(30)
    # The broker is back; the create waits in the outbox for its back-off.
    with capture_events(publish=True), caplog.at_level(logging.INFO, logger="dbevents"):
        Customer.objects.filter(pk=early.pk).update(name="updated")
        other = Customer.objects.create(name="unrelated")
        assert publisher.wait(30)
    # The update did not overtake the create; the unrelated row was not held up.
    assert [(r.action, r.pk) for r in broker.drain()] == [("created", other.pk)]
    assert "wait for earlier events of the same rows" in caplog.text
    [update] = OutboxMessage.objects.filter(sent_at__isnull=True, routing_key="customer__updated")
    assert update.attempts == 0 and update.lease_owner is None   # handed over, not failed
    OutboxMessage.objects.update(available_at=None)
    Relay([connection.alias]).run(once=True)
    assert per_row(broker.drain()) == {early.pk: ["created", "updated"]}


def commit_history(rows: int, proxy: FaultProxy) -> list[int]:
    """Three transactions per row (create, update, update) while the broker refuses: every
    event waits in the outbox, each with its own random back-off."""
    proxy.refuse()
    with override_settings(NAMEKO_CONFIG={"AMQP_URI": proxy.uri()}, DBEVENTS_PUBLISH_RETRIES=1):
        with transaction.atomic():
            pks = [c.pk for c in Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(rows)])]
        for round_ in (1, 2):
            for start in range(0, rows, 25):   # many transactions, as many requests would commit them
                with transaction.atomic():
                    Customer.objects.filter(pk__in=pks[start:start + 25]).update(name=f"round {round_}")
        assert publisher.wait(60)
    now = timezone.now()
    rng = random.Random(7)
    # Later events often become available before earlier ones: what back-off does after an outage.
    for row in OutboxMessage.objects.filter(sent_at__isnull=True).only("id"):
        OutboxMessage.objects.filter(pk=row.pk).update(available_at=now + timedelta(seconds=rng.uniform(-3, 1.5)),
                                                       lease_owner=None)
    proxy.accept()
    return pks


@pytest.mark.parametrize("relays", [1, 2])
def test_relays_publish_each_rows_events_in_commit_order_after_random_back_offs(broker, rabbitmq_uri, relays):
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(rabbitmq_uri)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as proxy:
        pks = commit_history(200, proxy)
        assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 600
        with override_settings(NAMEKO_CONFIG={"AMQP_URI": proxy.uri()}):
            workers = [Relay([connection.alias], worker_id=f"r{i}", batch_size=40) for i in range(relays)]
            threads = [threading.Thread(target=w.run, kwargs={"once": True}) for w in workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
    received = broker.drain()
    ids = [r.headers["dbevents.event_id"] for r in received]
    left = list(OutboxMessage.objects.filter(sent_at__isnull=True).values_list(
        "id", "event_key", "routing_key", "attempts", "lease_owner", "available_at", "last_error"))
    state = f"left in the outbox: {left}; relays (published, failed, left): " + str(
        [(w.published, w.failed, w.left) for w in workers])
    assert len(ids) == len(set(ids)) == 600, state
    assert per_row(received) == {pk: ["created", "updated", "updated"] for pk in pks}
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


def test_a_dead_row_does_not_block_the_rows_later_events(broker):
    with capture_events(publish=True):
        row = Customer.objects.create(name="x")
        assert publisher.wait(30)
    broker.drain()
    # Its next event could not be encoded: set aside as dead, not pending.
    first = OutboxMessage.objects.filter(event_key=f"shop.Customer:{row.pk}").latest("id")
    OutboxMessage.objects.filter(pk=first.pk).update(sent_at=None, dead_at=timezone.now(),
                                                     last_error="cannot be encoded: TypeError")
    with capture_events(publish=True):
        Customer.objects.filter(pk=row.pk).update(name="y")
        assert publisher.wait(30)
    assert [(r.action, r.pk) for r in broker.drain()] == [("updated", row.pk)]
    # Nor a relay's claim: the row's next event, left in the outbox, is claimable.
    with broker_down():
        Customer.objects.filter(pk=row.pk).update(name="z")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None)
    Relay([connection.alias]).run(once=True)
    assert [(r.action, r.payload["name"]) for r in broker.drain()] == [("updated", "z")]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_rows_of_a_crashed_writer_on_this_host_are_taken_at_once(broker):
    events = backlog(20)
    # As a writer killed between COMMIT and publishing leaves them: leased for the full lease.
    owner = owners.process_owner().replace(f":{os.getpid()}@", f":{dead_pid()}@")
    OutboxMessage.objects.update(lease_owner=owner, available_at=timezone.now() + timedelta(seconds=600))
    out = io.StringIO()
    call_command("dbevents_relay", "--database", connection.alias, "--once", stdout=out)
    assert "published 20 event(s)" in out.getvalue()
    assert sorted(r.headers["dbevents.event_id"] for r in broker.drain()) == sorted(e.id for e in events)


def test_rows_of_a_live_or_foreign_owner_wait_for_their_lease():
    with broker_down():
        Customer.objects.create(name="x")
        assert publisher.wait(30)
    until = timezone.now() + timedelta(seconds=600)
    gone = dead_pid()
    this = owners.process_owner()
    for owner in (
        this,                                                   # alive
        f"commit:another-host:{gone}@{this.rsplit('@', 1)[1]}",  # another host
        this.replace(f":{os.getpid()}@", f":{gone}@") + "0",     # another pid namespace (a sidecar)
        f"commit:{this.split(':')[1]}:{gone}",                  # no namespace: cannot tell
        "my-relay:1",                                           # a name given with --worker-id
    ):
        OutboxMessage.objects.update(lease_owner=owner, available_at=until)
        assert leases.release_dead_owners(connection.alias, owners.owner_is_dead) == 0, owner
        assert OutboxMessage.objects.get().lease_owner == owner


def test_relay_once_waits_for_rows_in_back_off(broker):
    with broker_down(), capture_events(publish=True) as events:
        Customer.objects.create(name="x")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=timezone.now() + timedelta(seconds=1.0))
    out = io.StringIO()
    call_command("dbevents_relay", "--database", connection.alias, "--once", stdout=out)
    assert "published 1 event(s), 0 returned unroutable, 0 failed event publish attempt(s)" in out.getvalue()
    assert [r.headers["dbevents.event_id"] for r in broker.drain()] == [events[0].id]


def test_relay_once_exits_1_naming_what_it_left_when_the_broker_stays_down():
    with broker_down():
        Customer.objects.bulk_create([Customer(name="a"), Customer(name="b")])
        assert publisher.wait(30)
        OutboxMessage.objects.update(available_at=None)
        out = io.StringIO()
        with pytest.raises(CommandError) as failed:
            call_command("dbevents_relay", "--database", connection.alias, "--once", stdout=out,
                         stderr=io.StringIO())
    assert failed.value.returncode == 1
    assert str(failed.value).startswith("2 event(s) still pending")
    assert "published 0 event(s), 0 returned unroutable, 2 failed event publish attempt(s)" in out.getvalue()
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 2


def test_relay_once_counts_unroutable_events(rabbitmq_uri):
    with override_settings(NAMEKO_CONFIG={"AMQP_URI": rabbitmq_uri}, SERVICE_NAME="nobody_listens_here"):
        with broker_down():
            Customer.objects.create(name="x")
            assert publisher.wait(30)
        OutboxMessage.objects.update(available_at=None)
        out = io.StringIO()
        call_command("dbevents_relay", "--database", connection.alias, "--once", stdout=out)
    assert "published 0 event(s), 1 returned unroutable, 0 failed event publish attempt(s)" in out.getvalue()
    assert OutboxMessage.objects.get().last_error.startswith(outbox.UNROUTABLE)


WRITER = """
import django, os, sys, time
django.setup()
from django.conf import settings
settings.DBEVENTS_TRANSPORT = "tests.test_delivery.SlowTransport"
settings.DBEVENTS_SHUTDOWN_TIMEOUT = 0.5
from django.db import transaction
from tests.shop.models import Customer
for i in range(60):
    with transaction.atomic():
        Customer.objects.create(name=f"w{i}")
print("committed", flush=True)
"""


@pytest.mark.skipif(IN_MEMORY_SQLITE, reason="a writer in another process cannot open the in-memory SQLite "
                                              "test database")
def test_an_exiting_process_hands_its_backlog_over_at_once_with_one_warning():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DBEVENTS_TEST_DB": connection.vendor,
           "DBEVENTS_TEST_DB_NAME": connection.settings_dict["NAME"], "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(WRITER)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "committed" in done.stdout, done.stderr
    exiting = [line for line in done.stderr.splitlines() if "exiting with" in line]
    assert len(exiting) == 1, done.stderr
    assert "event(s) are handed to dbevents_relay" in exiting[0] and len(exiting[0]) < 4000
    pending = OutboxMessage.objects.filter(sent_at__isnull=True)
    assert pending.count() == 60
    # Nothing waits for DBEVENTS_OUTBOX_LEASE: a relay may take every row now.
    now = timezone.now()
    assert not [r for r in pending if r.lease_owner and r.available_at and r.available_at > now]


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite's planner takes the first usable index "
                                                          "(checked by the drain in the other tests)")
def test_the_claim_asks_the_row_key_index_even_with_stale_statistics():
    """A just-filled outbox has no or stale planner statistics; the per-row "earlier event
    unsent?" check must still be an index lookup by key, not a range over every earlier unsent row (which
    made a claim of 20,000 rows take minutes on PostgreSQL)."""
    def fill(start, stop):
        OutboxMessage.objects.bulk_create([
            OutboxMessage(event_id=f"e{i}", transaction_id="t", ordinal=i, service_name="s", routing_key="r",
                          body=b"{}", content_type="application/json", content_encoding="utf-8", headers="{}",
                          created_at=timezone.now(), event_key=f"shop.Customer:{i}") for i in range(start, stop)],
            batch_size=2000)

    # Statistics taken while the outbox was nearly empty, then an outage fills it.
    fill(0, 10)
    with connection.cursor() as cursor:
        cursor.execute(("ANALYZE TABLE {}" if connection.vendor == "mysql" else "ANALYZE {}").format(
            connection.ops.quote_name(OutboxMessage._meta.db_table)))
    fill(10, 20_000)
    plan = leases.claimable(connection.alias, timezone.now()).values_list("id", flat=True)[:1000].explain()
    assert "dbevents_outbox_key_unsent" in plan, plan


def message(outbox_id, pk, action="updated"):
    from dbevents.events import Message

    return Message("s", f"customer__{action}", b"{}", "application/json", "utf-8",
                   {"dbevents.event_id": f"e{outbox_id}", "dbevents.model": "shop.Customer", "dbevents.pk": pk},
                   outbox_id, "default")


def test_commit_order_and_segments():
    later, earlier, other, direct = message(11, 1), message(10, 1, "created"), message(12, 2), message(None, 3)
    assert ordering.commit_order([later, direct, earlier, other]) == [earlier, direct, later, other]
    # Statement order kept; cut where a row repeats.
    assert ordering.segments([earlier, other, later, direct]) == [[earlier, other], [later, direct]]
    assert ordering.segments([other, direct]) == [[other, direct]] and ordering.segments([]) == []


class RecordingTransport:
    """Confirms everything but the events in ``refuse`` (a broker nack); records what it confirmed."""

    refuse: set[str] = set()
    confirmed: list[tuple[str, object]] = []

    def publish(self, messages):
        from dbevents.transport import PublishResult

        result = PublishResult()
        for m in messages:
            if m.routing_key in self.refuse:
                result.failed.append(m)
            else:
                result.confirmed.append(m)
                RecordingTransport.confirmed.append((m.routing_key, m.headers["dbevents.pk"]))
        if result.failed:
            result.error = RuntimeError(f"the broker rejected (nack) {len(result.failed)} message(s)")
        return result

    def close(self):
        pass


@pytest.fixture
def recording():
    RecordingTransport.refuse, RecordingTransport.confirmed = set(), []
    with override_settings(DBEVENTS_TRANSPORT="tests.test_ordering.RecordingTransport", DBEVENTS_PUBLISH_RETRIES=2):
        yield RecordingTransport


def test_a_nacked_event_keeps_its_rows_later_events_back(recording):
    recording.refuse = {"customer__created"}
    with capture_events(publish=True):
        with transaction.atomic():
            row = Customer.objects.create(name="x")
            Customer.objects.filter(pk=row.pk).update(name="y")
            other = Customer.objects.create(name="other")
        assert publisher.wait(30)
    # Neither of the row's later events went out before its created event (nor did "other"'s,
    # whose created was refused too); both wait in the outbox, in order, for the relay.
    assert recording.confirmed == []
    pending = list(OutboxMessage.objects.filter(sent_at__isnull=True).order_by("id").values_list(
        "routing_key", "attempts"))
    assert pending == [("customer__created", 1), ("customer__updated", 0), ("customer__created", 1)]
    recording.refuse = set()
    OutboxMessage.objects.update(available_at=None)
    Relay([connection.alias]).run(once=True)
    actions = [(key, pk) for key, pk in recording.confirmed]
    assert actions.index(("customer__created", row.pk)) < actions.index(("customer__updated", row.pk))
    assert sorted(actions) == sorted([("customer__created", row.pk), ("customer__updated", row.pk),
                                      ("customer__created", other.pk)])


def test_one_process_publishes_in_outbox_order_whatever_order_its_threads_queued(recording):
    from dbevents.events import Committed

    first, second = message(10, 1, "created"), message(11, 1)
    pub = publisher.Publisher()
    # Thread B committed after thread A (it waited for A's row lock) but queued first.
    pub._delivery.deliver([Committed([], "default", [second]), Committed([], "default", [first])])
    assert recording.confirmed == [("customer__created", 1), ("customer__updated", 1)]


def test_a_batch_claimed_ahead_too_long_ago_is_given_back_not_published():
    from dbevents.relay import _ClaimAhead

    ahead = _ClaimAhead()
    batch = [message(1, 1)]
    ahead.start("default", lambda alias: batch)
    assert ahead.take("default", max_age=0.0) == ([], batch)
    ahead.start("default", lambda alias: batch)
    assert ahead.take("default", max_age=60.0) == (batch, [])
    assert ahead.close() == []


def outbox_rows(*specs):
    """Outbox rows (key, sent) in id order; their messages."""
    now = timezone.now()
    rows = OutboxMessage.objects.bulk_create([
        OutboxMessage(event_id=uuid.uuid4().hex, transaction_id="t", ordinal=1, service_name="s",
                      routing_key="customer__updated", body=b"{}", content_type="application/json",
                      content_encoding="utf-8", headers="{}", created_at=now, event_key=key,
                      sent_at=now if sent else None)
        for key, sent in specs
    ])
    ids = list(OutboxMessage.objects.order_by("-id").values_list("id", flat=True)[:len(specs)])[::-1]
    from dbevents.events import Message

    return [Message("s", "customer__updated", b"{}", "application/json", "utf-8",
                    {"dbevents.model": "shop.Customer", "dbevents.pk": key.split(":")[-1]}, i, connection.alias)
            for (key, _), i in zip(specs, ids, strict=True)], rows


@pytest.mark.parametrize("backlog", [0, 1200], ids=["few-unsent", "backlog"])
def test_an_unsent_event_between_a_batchs_own_holds_its_rows_later_event_back(backlog):
    """A transaction written in chunks gets outbox ids on both sides of another process's row
    (committed meanwhile, still unsent): the batch's event of that row waits for it."""
    if backlog:
        outbox_rows(*[(f"shop.Customer:{1000 + i}", False) for i in range(backlog)])
    (first, foreign, later, done, last), _ = outbox_rows(
        ("shop.Customer:1", False), ("shop.Customer:2", False), ("shop.Customer:2", False),
        ("shop.Customer:3", True), ("shop.Customer:3", False))
    assert outbox.held_back([first, later, last]) == [later]
    assert outbox.held_back([first, foreign, later, last]) == []
