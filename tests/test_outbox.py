"""The transactional outbox: rows commit and roll back with the data, the committing process
publishes and marks them, the relay publishes what is left (in order, with back-off, never
expiring), and dbevents_status reports it."""

from __future__ import annotations

import io
import logging
import time
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from dbevents import leases, outbox, publisher
from dbevents.models import OutboxMessage
from dbevents.relay import Relay
from dbevents.testing import capture_events
from tests.shop.models import Customer, Order
from tests.test_delivery import dead_broker_uri

pytestmark = pytest.mark.django_db(transaction=True)
SQLITE = connection.vendor == "sqlite"


def rows() -> list[OutboxMessage]:
    return list(OutboxMessage.objects.order_by("id"))


def pending_ids() -> list[str]:
    return list(OutboxMessage.objects.filter(sent_at__isnull=True).order_by("id").values_list("event_id", flat=True))


def broker_down(**extra):
    """Every publish attempt fails at once; the fast path gives the rows to the relay."""
    return override_settings(NAMEKO_CONFIG={"AMQP_URI": dead_broker_uri()}, DBEVENTS_PUBLISH_RETRIES=1, **extra)


def backlog(n: int):
    """The events of ``n`` customers created while the broker was down: waiting in the outbox,
    available to a relay now."""
    with broker_down(), capture_events(publish=True) as events:
        Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(n)])
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None)
    return events


def test_rows_commit_with_the_data_and_are_marked_sent(broker):
    with capture_events(publish=True) as events:
        with transaction.atomic():
            c = Customer.objects.create(name="a")
            Customer.objects.filter(pk=c.pk).update(name="b")
    received = broker.drain()
    assert [r.headers["dbevents.event_id"] for r in received] == [e.id for e in events]
    assert [r.event_id for r in rows()] == [e.id for e in events]
    assert publisher.wait(30)
    for row in rows():
        assert row.sent_at is not None and row.lease_owner is None and row.attempts == 0


def test_rolled_back_work_leaves_no_row():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Customer.objects.create(name="gone")
            raise RuntimeError
    with transaction.atomic():
        Customer.objects.create(name="kept")
        try:
            with transaction.atomic():
                Customer.objects.create(name="savepoint rolled back")
                raise RuntimeError
        except RuntimeError:
            pass
    assert publisher.wait(30)
    assert [r.routing_key for r in rows()] == ["customer__created"]
    assert OutboxMessage.objects.get().headers.count('"dbevents.model":"shop.Customer"') == 1


def test_autocommit_statements_write_their_rows_atomically():
    with broker_down(), capture_events(publish=True) as events:
        c = Customer.objects.create(name="autocommit")
        assert publisher.wait(30)
        Customer.objects.filter(pk=c.pk).delete()
        assert publisher.wait(30)
    assert pending_ids() == [e.id for e in events]
    assert [r.routing_key for r in rows()] == ["customer__created", "customer__deleted"]


def test_a_testing_sink_that_keeps_events_writes_no_rows():
    with capture_events() as events:
        Customer.objects.create(name="only in the test")
    assert len(events) == 1 and rows() == []


def test_direct_delivery_writes_no_rows(broker):
    with override_settings(DBEVENTS_DELIVERY="direct"):
        Customer.objects.create(name="direct")
    assert [r.name for r in broker.drain()] == ["customer__created"]
    assert rows() == []


def test_the_relay_publishes_what_the_broker_missed_in_order_exactly_once(broker):
    with broker_down(), capture_events(publish=True) as events:
        with transaction.atomic():
            customers = [Customer.objects.create(name=f"c{i}") for i in range(5)]
        # (Waits: the in-memory SQLite test database lets one connection write at a time.)
        assert publisher.wait(30)
        Order.objects.create(customer=customers[0], number=1)
        assert publisher.wait(30)
        Customer.objects.filter(pk=customers[1].pk).update(name="renamed")
        assert publisher.wait(30)
    assert broker.drain() == []
    assert pending_ids() == [e.id for e in events]
    # The committing process handed its rows over: attempt counted, error kept, lease ended.
    first = OutboxMessage.objects.order_by("id").first()
    assert first.attempts == 1 and "ConnectionRefusedError" in first.last_error and first.lease_owner is None
    OutboxMessage.objects.update(available_at=None)   # skip the back-off
    relay = Relay([connection.alias], worker_id="test-relay")
    relay.run(once=True)
    received = broker.drain()
    assert [r.headers["dbevents.event_id"] for r in received] == [e.id for e in events]
    assert [r.payload for r in received] == [e.payload for e in events]
    assert relay.published == len(events) and pending_ids() == []
    Relay([connection.alias]).run(once=True)   # nothing left: nothing published twice
    assert broker.drain() == []


def test_the_relay_keeps_retrying_with_back_off_and_never_expires_rows(broker, caplog):
    with broker_down(), capture_events(publish=True) as events:
        Customer.objects.create(name="patience")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None, created_at=timezone.now() - timedelta(days=30))
    with broker_down(DBEVENTS_PUBLISH_RETRY_DELAY=0.2, DBEVENTS_PUBLISH_RETRY_MAX_DELAY=60):
        for expected_attempts in (2, 3):
            relay = Relay([connection.alias], worker_id="r")
            relay.run(once=True)
            row = OutboxMessage.objects.get()
            assert row.attempts == expected_attempts and row.sent_at is None
            wait = (row.available_at - timezone.now()).total_seconds()
            assert 0.2 * 2 ** (expected_attempts - 1) - 0.5 < wait <= 0.2 * 2 ** (expected_attempts - 1)
            OutboxMessage.objects.update(available_at=None)
    assert f"{events[0].id} (customer__created shop.Customer" in caplog.text
    outbox.cleanup(connection.alias, retention=0)   # a month old, but unsent: kept
    Relay([connection.alias]).run(once=True)
    assert [r.headers["dbevents.event_id"] for r in broker.drain()] == [events[0].id]


def test_a_lease_held_by_a_dead_process_expires():
    with broker_down():
        Customer.objects.create(name="orphan")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None)
    with override_settings(DBEVENTS_OUTBOX_LEASE=0.5):
        claimed = leases.claim(connection.alias, "killed-relay", 10)
    assert len(claimed) == 1
    assert leases.claim(connection.alias, "other", 10) == []   # leased: not taken twice
    time.sleep(0.6)
    assert [m.outbox_id for m in leases.claim(connection.alias, "other", 10)] == [claimed[0].outbox_id]


def test_a_relay_restarted_under_its_worker_id_takes_its_leases_back_at_once():
    with broker_down():
        Customer.objects.create(name="x")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None)
    leases.claim(connection.alias, "relay-1", 10)
    assert leases.release_owner(connection.alias, "relay-1") == 1
    assert len(leases.claim(connection.alias, "relay-2", 10)) == 1


def test_unroutable_events_are_recorded_not_retried(rabbitmq_uri, caplog):
    service = f"nobody_{uuid.uuid4().hex[:8]}"
    with override_settings(NAMEKO_CONFIG={"AMQP_URI": rabbitmq_uri}, SERVICE_NAME=service):
        with capture_events(publish=True) as events:
            Customer.objects.create(name="into the void")
        assert publisher.wait(30)
    row = OutboxMessage.objects.get()
    assert row.sent_at is not None and row.last_error.startswith("unroutable: NO_ROUTE")
    assert events[0].id in caplog.text and "unroutable" in caplog.text
    out = io.StringIO()
    call_command("dbevents_status", "--database", "default", stdout=out)
    assert "unroutable 1" in out.getvalue()


def test_nacked_messages_are_errors_and_stay_in_the_outbox(broker, caplog):
    from kombu import Exchange, Queue

    # A queue that refuses what it cannot hold: the broker nacks the overflow.
    full = Queue(f"dbevents-full-{uuid.uuid4().hex[:8]}", Exchange(f"{broker.service}.events", type="topic"),
                 routing_key="#", auto_delete=True, channel=broker.channel,
                 queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    full.declare()
    try:
        with capture_events(publish=True) as events:
            with transaction.atomic():
                for i in range(3):
                    Customer.objects.create(name=f"n{i}")
        assert publisher.wait(30)
    finally:
        full.delete()
    assert len(broker.drain()) >= 3   # the other queue got them; the full one nacked
    final = [r.getMessage() for r in caplog.records if "stay in the outbox" in r.getMessage()]
    assert len(final) == 1 and "the broker rejected (nack)" in final[0]
    left = pending_ids()
    assert len(left) == 2 and set(left) <= {e.id for e in events}


def test_cleanup_deletes_old_sent_rows_only():
    with broker_down():
        for name in "abc":
            Customer.objects.create(name=name)
        assert publisher.wait(30)
    first, second, third = rows()
    old = timezone.now() - timedelta(days=8)
    OutboxMessage.objects.filter(pk=first.pk).update(sent_at=old)
    OutboxMessage.objects.filter(pk=second.pk).update(sent_at=timezone.now())
    OutboxMessage.objects.filter(pk=third.pk).update(created_at=old)   # old but unsent
    assert outbox.cleanup(connection.alias) == 1
    assert [r.pk for r in rows()] == [second.pk, third.pk]
    with override_settings(DBEVENTS_OUTBOX_RETENTION=None):
        assert outbox.cleanup(connection.alias) == 0


def test_status_command_reports_pending_age_and_errors():
    with broker_down():
        Customer.objects.create(name="late")
        assert publisher.wait(30)
    OutboxMessage.objects.update(created_at=timezone.now() - timedelta(seconds=120))
    out = io.StringIO()
    call_command("dbevents_status", "--database", "default", stdout=out)
    text = out.getvalue()
    assert "default: pending 1 (oldest 12" in text and "retrying 1" in text
    assert "last error: ConnectionRefusedError" in text
    with pytest.raises(SystemExit) as exit_:
        call_command("dbevents_status", "--database", "default", "--max-age", "60", stdout=io.StringIO(), stderr=io.StringIO())
    assert exit_.value.code == 2
    call_command("dbevents_status", "--database", "default", "--max-age", "600", stdout=io.StringIO())
    out = io.StringIO()
    call_command("dbevents_status", "--database", "default", "--json", stdout=out)
    assert '"pending": 1' in out.getvalue()


def test_commands_name_a_bad_database():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--database nope: no outbox there"):
        call_command("dbevents_relay", "--database", "nope", "--once")
    with pytest.raises(CommandError, match="--database nope: no outbox there"):
        call_command("dbevents_status", "--database", "nope")


def test_relay_command_once(broker):
    with broker_down(), capture_events(publish=True) as events:
        Customer.objects.create(name="via the command")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None)
    out = io.StringIO()
    call_command("dbevents_relay", "--database", connection.alias, "--once", "--worker-id", "cmd", stdout=out)
    assert "published 1 event(s)" in out.getvalue()
    assert [r.headers["dbevents.event_id"] for r in broker.drain()] == [events[0].id]


def test_the_outbox_is_never_captured(broker):
    with broker_down():
        Customer.objects.create(name="x")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None)
    with capture_events(publish=True) as events:
        Relay([connection.alias]).run(once=True)
        outbox.cleanup(connection.alias, retention=0)
    assert events == [] and len(broker.drain()) == 1


def test_a_missing_outbox_table_falls_back_to_direct_delivery(broker, caplog):
    with connection.schema_editor() as editor:
        editor.alter_db_table(OutboxMessage, "dbevents_outbox", "dbevents_outbox_away")
    try:
        with capture_events(publish=True) as events:
            with transaction.atomic():
                c = Customer.objects.create(name="still written")
            Customer.objects.filter(pk=c.pk).update(name="and updated")
    finally:
        with connection.schema_editor() as editor:
            editor.alter_db_table(OutboxMessage, "dbevents_outbox_away", "dbevents_outbox")
    assert Customer.objects.get(pk=c.pk).name == "and updated"
    assert [r.headers["dbevents.event_id"] for r in broker.drain()] == [e.id for e in events]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("migrate dbevents --database=default" in e for e in errors)
    assert events[0].id in errors[0] and events[1].id in errors[1]


@pytest.mark.skipif(SQLITE, reason="in-memory SQLite allows one writer at a time")
def test_two_relays_in_threads_never_publish_an_event_twice(broker):
    import threading

    events = backlog(600)
    relays = [Relay([connection.alias], worker_id=f"t{i}", batch_size=50) for i in range(2)]
    threads = [threading.Thread(target=r.run, kwargs={"once": True}) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [r.headers["dbevents.event_id"] for r in broker.drain()]
    assert len(ids) == len(set(ids)) == len(events) == 600
    assert all(r.published > 0 for r in relays), "both relays took part"


def test_check_warns_when_the_outbox_table_is_missing():
    from django.core import checks

    def outbox_warnings():
        return [m for m in checks.run_checks(tags=[checks.Tags.database], databases=["default"])
                if m.id == "dbevents.W002"]

    assert outbox_warnings() == []
    with connection.schema_editor() as editor:
        editor.alter_db_table(OutboxMessage, "dbevents_outbox", "dbevents_outbox_away")
    try:
        (warning,) = outbox_warnings()
    finally:
        with connection.schema_editor() as editor:
            editor.alter_db_table(OutboxMessage, "dbevents_outbox_away", "dbevents_outbox")
    assert warning.msg.startswith("Database 'default' has no dbevents_outbox table yet")
    assert warning.hint.startswith("Run: manage.py migrate dbevents --database=default")


@pytest.mark.django_db(transaction=True)
def test_the_publishers_queries_stay_out_of_the_applications_query_log():
    """With DEBUG=True Django logs every query to ``django.db.backends``; the publisher thread
    marking outbox rows sent is dbevents' business, not the application's."""
    from unittest import mock

    from django.test import override_settings

    from dbevents import publisher
    from tests.shop.models import Customer

    with override_settings(DEBUG=True), mock.patch("django.db.backends.utils.logger") as log:
        Customer.objects.create(name="logged")
        assert publisher.wait(30)
    logged = [c.args[2] for c in log.debug.call_args_list]
    assert any("shop_customer" in sql for sql in logged)
    assert not any("dbevents_outbox" in sql for sql in logged), logged


@pytest.mark.skipif(SQLITE, reason="on SQLite the relay claims and marks in turn (one writer at a time)")
def test_the_relay_claims_its_next_batch_while_it_publishes_the_current_one(broker):
    import threading

    from dbevents.transport import Sender

    events = backlog(150)
    claimed_ahead = threading.Event()
    original_claim, original_publish = leases.claim, Sender.publish

    def claim(*args, **kwargs):
        found = original_claim(*args, **kwargs)
        if found and threading.current_thread() is not threading.main_thread():
            claimed_ahead.set()
        return found

    def publish(self, messages):
        # Serialized claim / publish / mark would never get past this wait.
        if len(messages) == 50 and messages[0].event_id == events[0].id:
            assert claimed_ahead.wait(10), "the next batch was not claimed while this one was published"
        return original_publish(self, messages)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(leases, "claim", claim)
        mp.setattr(Sender, "publish", publish)
        relay = Relay([connection.alias], batch_size=50)
        relay.run(once=True)
    assert relay.published == 150 and claimed_ahead.is_set()
    ids = [r.headers["dbevents.event_id"] for r in broker.drain()]
    assert sorted(ids) == sorted(e.id for e in events) and len(ids) == 150


def test_a_database_failure_giving_rows_back_is_logged_and_the_relay_goes_on(monkeypatch, caplog):
    from django.db import OperationalError

    backlog(3)
    calls = []

    def broken_release(*args, **kwargs):
        calls.append(args)
        raise OperationalError("the database went away")

    monkeypatch.setattr(leases, "release", broken_release)
    with broker_down():
        relay = Relay([connection.alias])
        relay.run(once=True)   # returns: the failures are logged, not raised
    assert calls and relay.published == 0
    assert "could not give 3 outbox row(s) back; they are retried when their lease ends" in caplog.text


def test_the_migration_gives_rows_left_from_before_it_their_row_key():
    import importlib

    from django.apps import apps

    migration = importlib.import_module("dbevents.migrations.0002_event_key_dead_at")
    with broker_down():
        customer = Customer.objects.create(name="from before the upgrade")
        assert publisher.wait(30)
    OutboxMessage.objects.update(event_key="")

    class Editor:
        connection = connection

    migration.fill_event_keys(apps, Editor())
    assert list(OutboxMessage.objects.values_list("event_key", flat=True)) == [f"shop.Customer:{customer.pk}"]
