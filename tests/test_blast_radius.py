"""A bad row, a bad exchange or a huge transaction costs only itself: the rest of the
transaction (and every other service's events) still reach the consumer, and the log and
``dbevents_status`` name what was set aside and why."""

from __future__ import annotations

import io
import logging
import uuid

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from rest_framework import serializers

from dbevents import publisher
from dbevents.models import OutboxMessage
from dbevents.relay import Relay
from dbevents.testing import capture_events
from dbevents.transport import Sender
from tests.shop.models import Customer, Order

pytestmark = pytest.mark.django_db(transaction=True)


class TaggingSerializer(serializers.ModelSerializer):
    """Gives rows named "bad" a value no JSON encoder takes (a set)."""

    tags = serializers.SerializerMethodField()

    class Meta:
        model = Customer
        fields = ("id", "name", "tags")

    def get_tags(self, obj):
        return {"a", "b"} if obj.name == "bad" else ["a"]


class FussySerializer(serializers.ModelSerializer):
    """Raises for rows named "bad", as a serializer with a bug for some data would."""

    class Meta:
        model = Customer
        fields = ("id", "name")

    def to_representation(self, instance):
        if instance.name == "bad":
            raise ValueError(f"cannot represent {instance.pk}")
        return super().to_representation(instance)


def registered(customer_serializer, *, customer_service=None):
    entry = {"model": "shop.Customer", "serializer": f"tests.test_blast_radius.{customer_serializer}"}
    if customer_service:
        entry["service_name"] = customer_service
    return override_settings(MODELS_CRUD_EVENT=[
        entry, {"model": "shop.Order", "serializer": "tests.shop.serializers.OrderSerializer"},
    ])


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.rabbitmq
def test_an_unencodable_value_sets_aside_its_event_only(broker, caplog):
    with registered("TaggingSerializer"), capture_events(publish=True) as events:
        with transaction.atomic():
            good = Customer.objects.create(name="good")
            bad = Customer.objects.create(name="bad")
            Order.objects.create(customer=good, number=1)
    received = broker.drain()
    # Everything but the bad row's event reached the consumer.
    assert sorted((r.name, r.pk) for r in received) == sorted(
        [("customer__created", good.pk), ("order__created", Order.objects.get().pk)])
    assert {r.headers["dbevents.event_id"] for r in received} == {e.id for e in events if e.pk != bad.pk}
    # The bad one is kept in the outbox, dead, with the real cause and where the value sits.
    dead = OutboxMessage.objects.get(dead_at__isnull=False)
    assert dead.event_key == f"shop.Customer:{bad.pk}" and dead.sent_at is None
    assert "TypeError" in dead.last_error and "payload['tags']" in dead.last_error
    assert not OutboxMessage.objects.filter(sent_at__isnull=True, dead_at__isnull=True).exists()
    [logged] = errors(caplog)
    assert f"shop.Customer pk={bad.pk}" in logged and "payload['tags']" in logged and "set" in logged
    assert "migrated" not in logged and "published directly" not in logged
    out = io.StringIO()
    call_command("dbevents_status", "--database", "default", stdout=out)
    assert "dead 1" in out.getvalue() and "payload['tags']" in out.getvalue()
    # The relay never publishes a dead row.
    relay = Relay([connection.alias])
    relay.run(once=True)
    assert relay.published == 0 and broker.drain() == []


def test_an_unencodable_value_in_direct_delivery_loses_its_event_only(caplog):
    with registered("TaggingSerializer"), override_settings(DBEVENTS_DELIVERY="direct"):
        sent = []
        original = Sender.publish

        def spy(self, messages):
            sent.extend(messages)
            return original(self, messages)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Sender, "publish", spy)
            with transaction.atomic():
                Customer.objects.create(name="good")
                bad = Customer.objects.create(name="bad")
            assert publisher.wait(30)
    assert [m.headers["dbevents.pk"] for m in sent] == [Customer.objects.get(name="good").pk]
    [logged] = errors(caplog)
    assert f"pk={bad.pk}" in logged and "it is lost (direct delivery)" in logged and "payload['tags']" in logged


def test_a_serializer_failing_on_one_row_loses_that_row_only(caplog):
    with registered("FussySerializer"), capture_events() as events:
        with transaction.atomic():
            rows = Customer.objects.bulk_create(
                [Customer(name="bad" if i in (7, 300) else f"c{i}") for i in range(500)])
    bad = {rows[7].pk, rows[300].pk}
    assert len(events) == 498 and {e.pk for e in events} == {c.pk for c in rows} - bad
    lost = [m for m in errors(caplog) if "its created event is lost" in m]
    assert len(lost) == 2 and all(any(f"pk={pk}" in m for m in lost) for pk in bad)
    assert all("ValueError: cannot represent" in m for m in lost)
    assert Customer.objects.count() == 500


def test_a_serializer_failing_on_many_rows_logs_a_bounded_summary(caplog):
    with registered("FussySerializer"), capture_events() as events:
        Customer.objects.bulk_create([Customer(name="bad" if i % 2 else f"c{i}") for i in range(400)])
    assert len(events) == 200
    logged = errors(caplog)
    assert len(logged) == 11 and "190 more row(s)" in logged[-1]
    assert max(len(m) for m in logged) < 2000


@pytest.mark.rabbitmq
def test_an_exchange_that_cannot_be_declared_holds_up_only_its_own_events(broker, caplog):
    from kombu import Exchange

    bad_service = f"clashing_{uuid.uuid4().hex[:8]}"
    # Declared elsewhere with other arguments: nameko's topic exchange gets PRECONDITION_FAILED.
    clash = Exchange(f"{bad_service}.events", type="fanout", durable=False, channel=broker.channel)
    clash.declare()
    try:
        with registered("TaggingSerializer", customer_service=bad_service):
            with capture_events(publish=True) as events:
                with transaction.atomic():
                    customer = Customer.objects.create(name="stuck")
                    order = Order.objects.create(customer=customer, number=1)
            assert publisher.wait(30)
            # The order's event went out, on the same connection, in the same batch.
            assert [(r.name, r.pk) for r in broker.drain()] == [("order__created", order.pk)]
            stuck = OutboxMessage.objects.get(sent_at__isnull=True)
            assert stuck.event_id == next(e.id for e in events if e.model == "shop.Customer")
            assert "PRECONDITION_FAILED" in stuck.last_error and stuck.attempts == 1
            assert any("cannot be declared" in m and bad_service in m for m in errors(caplog))
            # The relay keeps trying it with back-off and meanwhile publishes everyone else's.
            Order.objects.filter(pk=order.pk).update(number=2)
            assert publisher.wait(30)
            assert [(r.name, r.pk) for r in broker.drain()] == [("order__updated", order.pk)]
            # Left to the relay, as after a crash: it goes out while the stuck row is retried.
            again = OutboxMessage.objects.filter(event_key=f"shop.Order:{order.pk}").latest("id")
            OutboxMessage.objects.filter(pk__in=[again.pk, stuck.pk]).update(
                sent_at=None, lease_owner=None, available_at=None)
            with override_settings(DBEVENTS_PUBLISH_RETRIES=1):
                relay = Relay([connection.alias])
                try:
                    assert relay.relay_once(connection.alias) == 2 and relay.published == 1
                finally:
                    relay.close()
            assert [(r.name, r.pk) for r in broker.drain()] == [("order__updated", order.pk)]
            assert OutboxMessage.objects.get(pk=stuck.pk).attempts == 2
            clash.delete()
            fixed = Exchange(f"{bad_service}.events", type="topic", durable=True, channel=broker.channel)
            fixed.declare()
            broker.queue.bind_to(fixed, routing_key="#")
            OutboxMessage.objects.update(available_at=None)
            Relay([connection.alias]).run(once=True)
        received = broker.drain()
        assert [(r.name, r.pk) for r in received] == [("customer__created", customer.pk)]
        assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()
    finally:
        broker.channel.exchange_delete(f"{bad_service}.events")


def test_a_transaction_larger_than_the_queue_is_published_by_its_process_in_chunks(caplog):
    sizes = []
    original = Sender.publish

    def spy(self, messages):
        sizes.append(len(messages))
        return original(self, messages)

    with override_settings(DBEVENTS_QUEUE_SIZE=100, DBEVENTS_PUBLISH_BATCH_SIZE=120):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Sender, "publish", spy)
            caplog.set_level(logging.WARNING, "dbevents")
            Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(500)])
            assert publisher.wait(30)
    assert sizes == [120, 120, 120, 120, 20]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert OutboxMessage.objects.filter(sent_at__isnull=False).count() == 500


def test_log_lines_about_many_events_stay_short(caplog):
    from tests.test_outbox import broker_down

    with broker_down():
        with transaction.atomic():
            Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(3000)])
        assert publisher.wait(30)
    logged = [r.getMessage() for r in caplog.records if r.name == "dbevents"]
    assert logged and max(len(m) for m in logged) < 4000
    assert any("3000 event(s) stay in the outbox" in m and "... and 2980 more" in m for m in logged)
    assert not errors(caplog)
