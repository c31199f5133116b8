"""Delivery: the exchange is declared by the publisher, a dead broker never fails or blocks the
committing request, and every event that cannot be delivered is logged with its id."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import pytest
from django.db import transaction
from django.test import override_settings

from dbevents import publisher
from dbevents.capture import commit
from dbevents.capture.pending import PendingEvents
from dbevents.capture.rows import Rows
from dbevents.testing import capture_events
from tests.shop.models import Customer

pytestmark = pytest.mark.django_db(transaction=True)


def dead_broker_uri() -> str:
    """An address where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"


@pytest.mark.rabbitmq
def test_exchange_is_declared_by_the_publisher(rabbitmq_uri, caplog):
    from kombu import Connection

    service = f"fresh_{uuid.uuid4().hex[:8]}"
    with override_settings(NAMEKO_CONFIG={"AMQP_URI": rabbitmq_uri}, SERVICE_NAME=service):
        Customer.objects.create(name="first event ever")
        assert publisher.wait(30)
    with Connection(rabbitmq_uri) as conn:
        channel = conn.channel()
        # Passive: raises NotFound unless dbevents declared it exactly as nameko does.
        channel.exchange_declare(f"{service}.events", "topic", durable=True, passive=True)
        channel.exchange_delete(f"{service}.events")
    # No queue was bound: the broker returned the message, which is an error, not silence.
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and service in r.getMessage()]
    assert len(problems) == 1 and "returned 1 event(s) as unroutable" in problems[0]
    assert "customer__created" in problems[0] and "NO_ROUTE" in problems[0]


@pytest.mark.rabbitmq
def test_nameko_exchange_options_are_honoured(rabbitmq_uri):
    from kombu import Connection

    service = f"nodeclare_{uuid.uuid4().hex[:8]}"
    config = {"AMQP_URI": rabbitmq_uri, "DECLARE_EVENT_EXCHANGES": False}
    with override_settings(NAMEKO_CONFIG=config, SERVICE_NAME=service, DBEVENTS_PUBLISH_RETRIES=1):
        Customer.objects.create(name="x")
        assert publisher.wait(30)
    with Connection(rabbitmq_uri) as conn:
        from amqp.exceptions import NotFound

        with pytest.raises(NotFound):
            conn.channel().exchange_declare(f"{service}.events", "topic", durable=True, passive=True)


@pytest.mark.parametrize("delivery", ["direct", "outbox"])
def test_dead_broker_commits_returns_promptly_and_names_every_event(caplog, delivery):
    from dbevents.models import OutboxMessage

    caplog.set_level(logging.WARNING, logger="dbevents")
    with override_settings(
        NAMEKO_CONFIG={"AMQP_URI": dead_broker_uri()}, DBEVENTS_DELIVERY=delivery,
        DBEVENTS_PUBLISH_RETRIES=3, DBEVENTS_PUBLISH_RETRY_DELAY=1.0, DBEVENTS_PUBLISH_RETRY_MAX_DELAY=1.0,
    ):
        started = time.monotonic()
        with capture_events(publish=True) as events:
            with transaction.atomic():
                a = Customer.objects.create(name="a")
                b = Customer.objects.create(name="b")
        returned_after = time.monotonic() - started
        # Publishing is still retrying (>= 2 s of back-off) while the request has long returned.
        assert returned_after < 1.5
        assert not publisher.wait(0)
        assert publisher.wait(30)
    assert Customer.objects.filter(pk__in=[a.pk, b.pk]).count() == 2
    level = logging.ERROR if delivery == "direct" else logging.WARNING
    final = [r.getMessage() for r in caplog.records if r.levelno == level and "after 3 attempt(s)" in r.getMessage()]
    assert len(final) == 1 and "publishing failed after 3 attempt(s) (ConnectionRefusedError" in final[0]
    for event in events:
        assert event.id in final[0]
    retries = [r for r in caplog.records if r.levelno == logging.WARNING and "retrying" in r.getMessage()]
    assert len(retries) == 2
    pending = list(OutboxMessage.objects.filter(sent_at__isnull=True).values_list("event_id", flat=True))
    if delivery == "direct":
        assert "2 event(s) lost: " in final[0] and pending == []
        assert not [r for r in caplog.records if r.levelno == logging.ERROR and r.getMessage() != final[0]]
    else:
        # Nothing is lost: the rows wait in the outbox for dbevents_relay.
        assert "2 event(s) stay in the outbox for dbevents_relay" in final[0]
        assert sorted(pending) == sorted(e.id for e in events)
        assert not [r for r in caplog.records if r.levelno == logging.ERROR]


def test_full_queue_logs_the_events_it_refuses(caplog):
    with override_settings(
        NAMEKO_CONFIG={"AMQP_URI": dead_broker_uri()}, DBEVENTS_QUEUE_SIZE=1,
        DBEVENTS_PUBLISH_RETRIES=2, DBEVENTS_PUBLISH_RETRY_DELAY=0.5, DBEVENTS_PUBLISH_LINGER=0,
    ):
        with capture_events(publish=True) as events:
            Customer.objects.create(name="queued")     # taken by the publisher thread
            Customer.objects.create(name="queued too")  # waits in the queue
            Customer.objects.create(name="refused")     # over DBEVENTS_QUEUE_SIZE
        assert publisher.wait(30)
    refused = [r.getMessage() for r in caplog.records if "publish queue is full" in r.getMessage()]
    assert len(refused) >= 1 and events[-1].id in refused[-1]


def test_serializer_failure_never_fails_the_write(caplog):
    with override_settings(MODELS_CRUD_EVENT=[
        {"model": "shop.Customer", "serializer": "tests.test_delivery.BrokenSerializer"},
    ]):
        with capture_events() as events:
            with transaction.atomic():
                c = Customer.objects.create(name="kept")
    assert Customer.objects.filter(pk=c.pk).exists()
    assert events == []
    assert (f"serializer of shop.Customer failed on pk={c.pk} on 'default' (RuntimeError: boom); "
            "its created event is lost") in caplog.text


from rest_framework import serializers  # noqa: E402


class BrokenSerializer(serializers.Serializer):
    name = serializers.SerializerMethodField()

    def get_name(self, obj):
        raise RuntimeError("boom")


def break_capture(monkeypatch, where, name):
    """Make one step of capture raise, as a bug in it would."""

    def broken(*args, **kwargs):
        raise RuntimeError("capture bug")

    monkeypatch.setattr(where, name, broken)


def test_capture_failing_before_the_statement_never_fails_the_write(monkeypatch, caplog):
    break_capture(monkeypatch, PendingEvents, "settle")
    with capture_events() as events:
        c = Customer.objects.create(name="written anyway")
        assert Customer.objects.filter(pk=c.pk).update(name="updated anyway") == 1
    assert Customer.objects.get(pk=c.pk).name == "updated anyway"
    assert events == []
    assert "the statement runs uncaptured and its events are lost" in caplog.text


def test_capture_failing_after_the_statement_returns_djangos_result(monkeypatch, caplog):
    break_capture(monkeypatch, PendingEvents, "record")
    with capture_events() as events:
        c = Customer.objects.create(name="written anyway")
        assert Customer.objects.filter(pk=c.pk).update(name="updated anyway") == 1
    assert c.pk is not None and Customer.objects.get(pk=c.pk).name == "updated anyway"
    assert events == []
    assert "are lost: its rows could not be read" in caplog.text


class SlowTransport:
    """Takes its time, as a stalled broker would."""

    def __init__(self):
        pass

    def publish(self, events):
        time.sleep(1.0)
        raise ConnectionError("stalled")

    def close(self):
        pass


def test_exit_names_the_events_still_being_published(caplog):
    from dbevents.events import Committed, Event

    pub = publisher.Publisher()
    event = Event(name="customer__created", service_name="s", payload={},
                  headers={"dbevents.event_id": "e1", "dbevents.model": "shop.Customer", "dbevents.pk": 1})
    with override_settings(DBEVENTS_TRANSPORT="tests.test_delivery.SlowTransport", DBEVENTS_SHUTDOWN_TIMEOUT=0.2,
                           DBEVENTS_PUBLISH_RETRIES=1):
        pub.submit(Committed([event]))
        time.sleep(0.1)  # the publisher thread has taken the batch
        pub.shutdown()
        assert ("exiting with 1 unpublished event(s); 1 event(s) lost (direct delivery): "
                "e1 (customer__created shop.Customer pk=1)") in caplog.text
        pub.wait(5)


def test_failure_around_building_events_at_commit_never_fails_the_commit(monkeypatch, caplog):
    break_capture(monkeypatch, Rows, "execute")   # the SAVEPOINT on PostgreSQL
    break_capture(monkeypatch, commit, "prepare")  # building the events, elsewhere
    with capture_events() as events:
        with transaction.atomic():
            c = Customer.objects.create(name="committed")
    assert Customer.objects.filter(pk=c.pk).exists()
    assert events == []
    assert f"shop.Customer pks=[{c.pk}]" in caplog.text


class CountingTransport:
    """Confirms everything and records the size of each batch it was given."""

    batches: list[int] = []

    def publish(self, messages):
        from dbevents.transport import PublishResult

        CountingTransport.batches.append(len(messages))
        return PublishResult(confirmed=list(messages))

    def close(self):
        pass


def test_transactions_committed_close_together_go_out_as_one_batch():
    """The publisher lets transactions join a batch for DBEVENTS_PUBLISH_LINGER; a thread that
    waits for the events (publisher.wait()) does not wait for the linger."""
    CountingTransport.batches = []
    with override_settings(DBEVENTS_TRANSPORT="tests.test_delivery.CountingTransport", DBEVENTS_PUBLISH_LINGER=5.0):
        for i in range(3):
            Customer.objects.create(name=f"c{i}")
        started = time.monotonic()
        assert publisher.wait(10)
        waited = time.monotonic() - started
    assert CountingTransport.batches == [3]
    assert waited < 4.0
