"""Large transactions: past ``DBEVENTS_TRANSACTION_CHUNK`` events, a transaction writes them to
the outbox in chunks while it runs (inside it: a rollback, or a rollback to a savepoint, takes
them back with the data) and the committing process reads them back after COMMIT. What a
consumer receives is the same as for a small transaction: one event per row, in order, numbered
1..N in one transaction."""

from __future__ import annotations

import gc
import logging
import tracemalloc
from collections.abc import Sequence

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.test import override_settings

from dbevents import publisher
from dbevents.models import OutboxMessage
from dbevents.transport import Message, PublishResult
from tests.shop.models import Customer, Order

pytestmark = pytest.mark.django_db(transaction=True)

CHUNK = 50


def chunked(**extra):
    return override_settings(DBEVENTS_TRANSACTION_CHUNK=CHUNK, **extra)


def in_transaction(received) -> list[int]:
    """The ordinals of ``received``, checking they are one transaction's."""
    assert len({r.headers["dbevents.transaction_id"] for r in received}) == 1
    return [r.headers["dbevents.ordinal"] for r in received]


def test_a_large_transaction_is_written_in_chunks_and_arrives_whole(broker):
    with chunked():
        with transaction.atomic():
            Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(130)])
            # Written before COMMIT (invisible to anyone else until then), in chunks.
            assert 2 * CHUNK <= OutboxMessage.objects.count() < 130
            Customer.objects.update(name=F("name"))
        received = broker.drain()
    created = [r for r in received if r.action == "created"]
    updated = [r for r in received if r.action == "updated"]
    assert len(created) == len(updated) == 130
    assert len({r.pk for r in created}) == 130 and {r.pk for r in updated} == {r.pk for r in created}
    assert sorted(in_transaction(received)) == list(range(1, 261))
    # Per row, in commit order: its created event before its updated one.
    position = {(r.action, r.pk): i for i, r in enumerate(received)}
    assert all(position[("created", r.pk)] < position[("updated", r.pk)] for r in created)
    assert publisher.wait(30)
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 0
    # The events written early do not know the transaction's size yet; the last ones do.
    sizes = {r.headers["dbevents.transaction_size"] for r in received}
    assert sizes == {None, 260}
    assert received[-1].headers["dbevents.transaction_size"] == 260


def test_one_statement_of_many_rows_is_recorded_and_written_in_chunks(broker):
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(170)])
    broker.drain()
    with chunked():
        Customer.objects.update(name="renamed")   # autocommit: one statement, 170 rows
        received = broker.drain()
    assert len(received) == 170 and {r.action for r in received} == {"updated"}
    assert {r.payload["name"] for r in received} == {"renamed"}
    assert sorted(in_transaction(received)) == list(range(1, 171))
    assert sorted(r.pk for r in received) == sorted(Customer.objects.values_list("pk", flat=True))


def test_a_rolled_back_large_transaction_leaves_nothing(broker):
    with chunked(), pytest.raises(RuntimeError):
        with transaction.atomic():
            Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(120)])
            assert OutboxMessage.objects.count() >= 2 * CHUNK
            raise RuntimeError("rolled back")
    assert broker.drain() == []
    assert OutboxMessage.objects.count() == 0 and Customer.objects.count() == 0


def test_a_savepoint_rolled_back_takes_its_chunks_back(broker):
    with chunked():
        with transaction.atomic():
            kept = Customer.objects.bulk_create([Customer(name=f"kept{i}") for i in range(70)])
            with pytest.raises(RuntimeError), transaction.atomic():
                Customer.objects.bulk_create([Customer(name=f"gone{i}") for i in range(120)])
                raise RuntimeError("inner rolled back")
            later = Customer.objects.bulk_create([Customer(name=f"later{i}") for i in range(60)])
        received = broker.drain()
    assert sorted(r.pk for r in received) == sorted(c.pk for c in kept + later)
    assert not any(r.payload["name"].startswith("gone") for r in received)
    # The ordinals the rolled-back chunks had are given again: no gap for a consumer to wait on.
    assert sorted(in_transaction(received)) == list(range(1, 131))
    assert OutboxMessage.objects.count() == 130


def test_rows_written_before_a_savepoint_keep_their_order(broker):
    order = Order.objects.create(number=1, customer=Customer.objects.create(name="buyer"))
    broker.drain()
    with chunked():
        with transaction.atomic():
            Order.objects.filter(pk=order.pk).update(status="first")    # before the savepoint: kept in memory
            with transaction.atomic():
                Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(120)])
                Order.objects.filter(pk=order.pk).update(status="second")
        received = broker.drain()
    assert [r.payload["status"] for r in received if r.headers["dbevents.model"] == "shop.Order"] == ["first", "second"]
    assert len([r for r in received if r.headers["dbevents.model"] == "shop.Customer"]) == 120
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 0


def test_a_failed_early_write_keeps_the_events_for_commit(broker, monkeypatch, caplog):
    from dbevents import outbox

    real = outbox.store
    calls = []

    def failing_once(connection, messages, dead=(), **kw):
        calls.append(len(messages))
        if len(calls) == 1:
            raise RuntimeError("outbox unavailable")
        return real(connection, messages, dead, **kw)

    monkeypatch.setattr(outbox, "store", failing_once)
    with chunked(), caplog.at_level(logging.ERROR, logger="dbevents"):
        with transaction.atomic():
            Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(120)])
        received = broker.drain()
    assert len(received) == 120
    assert calls[0] > CHUNK and calls[1:] == [120]   # no more early writes after a failure: all at COMMIT
    assert "before COMMIT failed; they stay in memory" in caplog.text
    assert sorted(in_transaction(received)) == list(range(1, 121))


class Dropping:
    """Confirms every message and keeps none: what the broker holds does not count here."""

    def publish(self, messages: Sequence[Message]) -> PublishResult:
        return PublishResult(confirmed=list(messages))

    def close(self) -> None:
        pass


def peak_of_update(rows: int) -> int:
    """Peak traced Python memory of one ``QuerySet.update()`` of ``rows`` rows, until its events
    were handed to the broker."""
    Customer.objects.all().delete()
    Customer.objects.bulk_create([Customer(name=f"customer {i:08d}", email=f"c{i}@example.com")
                                  for i in range(rows)], batch_size=2000)
    assert publisher.wait(60)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        Customer.objects.update(name=F("email"))
        assert publisher.wait(60)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_peak_memory_of_a_large_update_does_not_grow_with_its_rows():
    settings = dict(DBEVENTS_TRANSACTION_CHUNK=500, DBEVENTS_PUBLISH_BATCH_SIZE=500,
                    DBEVENTS_TRANSPORT="tests.test_large_transactions.Dropping")
    with override_settings(**settings):
        peak_of_update(500)   # warm-up: imports, serializer, the outbox statements
        small, large = peak_of_update(2_000), peak_of_update(8_000)
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 0
    # Four times the rows, bounded by the chunk: not four times the memory.
    assert large < 1.5 * small, (small, large)


def test_reading_back_leaves_rows_a_relay_took_and_renews_leases_about_to_end():
    from datetime import timedelta

    from django.utils import timezone

    from dbevents import leases, owners

    with chunked(), override_settings(DBEVENTS_TRANSPORT="tests.test_large_transactions.Dropping"):
        with transaction.atomic():
            Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(CHUNK + 10)])
            ids = list(OutboxMessage.objects.order_by("id").values_list("id", flat=True))
        assert publisher.wait(30)
    me = owners.process_owner()
    now = timezone.now()
    OutboxMessage.objects.update(sent_at=None, lease_owner=me, available_at=now + timedelta(seconds=55))
    OutboxMessage.objects.filter(pk=ids[0]).update(lease_owner="relay-1:abcd")          # a relay took it
    OutboxMessage.objects.filter(pk=ids[1]).update(available_at=now + timedelta(seconds=5))  # about to end
    taken = leases.take_own(connection.alias, ids, me)
    assert [m.outbox_id for m in taken] == ids[1:]
    renewed = OutboxMessage.objects.get(pk=ids[1]).available_at
    assert renewed > now + timedelta(seconds=50)
    assert OutboxMessage.objects.get(pk=ids[0]).lease_owner == "relay-1:abcd"
