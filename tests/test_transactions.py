"""When events are published: after the outermost COMMIT, never for rolled-back work, right
after autocommit statements, with the row as each statement left it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from dbevents.testing import capture_events
from tests.conftest import names
from tests.shop.models import Counter, Customer, Order

pytestmark = pytest.mark.django_db(transaction=True)


def test_nothing_before_outermost_commit():
    with capture_events() as events:
        with transaction.atomic():
            Customer.objects.create(name="a")
            with transaction.atomic():
                Customer.objects.create(name="b")
            assert events == []
        assert names(events) == ["customer__created", "customer__created"]


def test_rollback_emits_nothing():
    with capture_events() as events:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                Customer.objects.create(name="a")
                Customer.objects.update(name="b")
                raise RuntimeError("abort")
        Customer.objects.create(name="after")
    assert [e.payload["name"] for e in events] == ["after"]


def test_rolled_back_savepoint_drops_only_its_events():
    with capture_events() as events:
        with transaction.atomic():
            kept = Customer.objects.create(name="kept")
            try:
                with transaction.atomic():
                    Customer.objects.create(name="dropped")
                    Customer.objects.filter(pk=kept.pk).update(name="dropped too")
                    raise ValueError
            except ValueError:
                pass
            with transaction.atomic():
                Customer.objects.create(name="released")
    assert [(e.name, e.payload["name"]) for e in events] == [
        ("customer__created", "kept"), ("customer__created", "released"),
    ]


def test_failed_insert_in_get_or_create_savepoint_emits_nothing():
    from tests.shop.models import Product

    Product.objects.create(sku="x", name="first")
    with capture_events() as events:
        with transaction.atomic():
            product, created = Product.objects.get_or_create(sku="x", defaults={"name": "second"})
    assert not created and events == []


def test_autocommit_publishes_right_after_each_statement():
    with capture_events() as events:
        c = Customer.objects.create(name="a")
        assert names(events) == ["customer__created"]
        Customer.objects.filter(pk=c.pk).update(name="b")
        assert names(events) == ["customer__created", "customer__updated"]


def test_manual_transaction_management_publishes_on_commit():
    with capture_events() as events:
        transaction.set_autocommit(False)
        try:
            Customer.objects.create(name="manual")
            assert events == []
            transaction.commit()
            assert names(events) == ["customer__created"]
            Customer.objects.create(name="rolled back")
            transaction.rollback()
        finally:
            transaction.set_autocommit(True)
    assert names(events) == ["customer__created"]


def test_two_statements_on_one_row_give_two_states_in_order():
    with capture_events() as events:
        with transaction.atomic():
            c = Customer.objects.create(name="v1")
            c.name = "v2"
            c.save()
            Customer.objects.filter(pk=c.pk).update(name="v3")
            c.delete()
    assert [(e.name, e.payload["name"]) for e in events] == [
        ("customer__created", "v1"), ("customer__updated", "v2"), ("customer__updated", "v3"),
        ("customer__deleted", "v3"),
    ]
    assert [e.headers["dbevents.ordinal"] for e in events] == [1, 2, 3, 4]


def test_rows_within_a_statement_in_ascending_key_order():
    Counter.objects.bulk_create([Counter(value=v) for v in (5, 3, 9, 1)])
    with capture_events() as events:
        Counter.objects.order_by("-value").update(value=0)
    pks = [e.pk for e in events]
    assert pks == sorted(pks) and len(pks) == 4


def test_payload_is_the_transaction_state_not_later_writes():
    # Row data is read inside the transaction: a write committed after it must not leak in.
    with capture_events() as events:
        with transaction.atomic():
            c = Customer.objects.create(name="inside")
        Customer.objects.filter(pk=c.pk).update(name="later")
    assert [e.payload["name"] for e in events] == ["inside", "later"]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_each_database_is_captured_on_its_own():
    with capture_events() as events:
        with transaction.atomic(using="other"):
            Customer.objects.using("other").create(name="other db")
            with transaction.atomic():
                Customer.objects.create(name="default db")
            assert [e.payload["name"] for e in events] == ["default db"]
        assert [e.payload["name"] for e in events] == ["default db", "other db"]
    assert [e.headers["dbevents.alias"] for e in events] == ["default", "other"]


def test_threads_are_captured_independently():
    if connection.vendor == "sqlite":
        pytest.skip("in-memory SQLite allows one writer at a time")
    done = []

    def worker(n):
        try:
            with transaction.atomic():
                Customer.objects.create(name=f"t{n}")
            done.append(n)
        finally:
            connections.close_all()

    with capture_events() as events:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # Sinks are per context: the worker threads' events went to the broker, not to this capture.
    assert sorted(done) == [0, 1, 2, 3] and events == []


def test_order_with_several_models_follows_statement_order():
    with capture_events() as events:
        with transaction.atomic():
            c = Customer.objects.create(name="c")
            o = Order.objects.create(customer=c, number=1)
            c.name = "c2"
            c.save()
            o.delete()
    assert names(events) == ["customer__created", "order__created", "customer__updated", "order__deleted"]


@pytest.mark.parametrize("in_atomic", [False, True], ids=["autocommit", "atomic"])
def test_a_commit_that_fails_fails_the_write_and_emits_nothing(broker, in_atomic):
    """A foreign key Django declares deferred (PostgreSQL, SQLite) is checked at COMMIT, which
    dbevents sends together with the outbox rows: the application gets the IntegrityError from
    the same call as on the stock engine, and no event goes out."""
    from django.db import IntegrityError

    from dbevents.models import OutboxMessage
    from tests.shop.models import Item

    order = Order.objects.create(number=1, customer=Customer.objects.create(name="c"))
    broker.drain()
    rows_before = OutboxMessage.objects.count()

    def write():
        Item.objects.create(order_id=order.pk + 1000, sku="dangling")

    with pytest.raises(IntegrityError):
        if in_atomic:
            with transaction.atomic():
                write()
        else:
            write()
    assert not Item.objects.exists()
    assert OutboxMessage.objects.count() == rows_before
    Item.objects.create(order=order, sku="ok")    # the connection goes on as usual
    received = broker.drain()
    assert [(r.name, r.payload["sku"]) for r in received] == [("line__created", "ok")]
