"""Every operation of the contract's capture table, asserted at a real RabbitMQ consumer.

Runs on the database DBEVENTS_TEST_DB selects (SQLite, PostgreSQL, MariaDB).
"""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction
from django.db.models import F

from tests.conftest import names
from tests.shop.models import (
    Bar,
    Counter,
    Coupon,
    Customer,
    Item,
    Note,
    Order,
    Payment,
    Pizzeria,
    Place,
    Product,
    Refund,
    Restaurant,
    Review,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]
MYSQL = connection.vendor == "mysql"


def pairs(received):
    return [(r.name, r.pk) for r in received]


def test_save_insert_and_update(broker):
    c = Customer.objects.create(name="Ann", email="a@example.com")
    c.name = "Anna"
    c.save()
    c.email = "x@example.com"
    c.save(update_fields=["email"])
    got = broker.drain()
    assert names(got) == ["customer__created", "customer__updated", "customer__updated"]
    assert [r.payload for r in got] == [
        {"id": c.pk, "name": "Ann", "email": "a@example.com"},
        {"id": c.pk, "name": "Anna", "email": "a@example.com"},
        {"id": c.pk, "name": "Anna", "email": "x@example.com"},
    ]
    assert got[0].exchange == f"{broker.service}.events"
    assert got[0].content_type == "application/json"
    assert got[0].properties["delivery_mode"] == 2


def test_force_insert_and_update_then_insert(broker):
    Customer(pk=500, name="forced").save(force_insert=True)
    # pk set, row missing: Django tries UPDATE (0 rows) then INSERT -> one created event only.
    Customer(pk=501, name="upsert-ish").save()
    assert pairs(broker.drain()) == [("customer__created", 500), ("customer__created", 501)]


def test_headers_identify_events(broker):
    with transaction.atomic():
        a = Customer.objects.create(name="a")
        b = Customer.objects.create(name="b")
    got = broker.drain()
    h0, h1 = got[0].headers, got[1].headers
    assert h0["dbevents.model"] == "shop.Customer" and h0["dbevents.pk"] == a.pk and h1["dbevents.pk"] == b.pk
    assert h0["dbevents.action"] == "created" and h0["dbevents.alias"] == "default"
    assert h0["dbevents.transaction_id"] == h1["dbevents.transaction_id"]
    assert (h0["dbevents.ordinal"], h1["dbevents.ordinal"]) == (1, 2)
    assert h0["dbevents.transaction_size"] == 2
    assert h0["dbevents.event_id"] != h1["dbevents.event_id"]
    assert h0["dbevents.timestamp"].endswith("+00:00")


def test_delete_with_cascade(broker):
    c = Customer.objects.create(name="Ann")
    o = Order.objects.create(customer=c, number=7)
    i1 = Item.objects.create(order=o, sku="a")
    i2 = Item.objects.create(order=o, sku="b")
    broker.drain()
    c.delete()
    got = broker.drain()
    assert pairs(got) == [("line__deleted", i1.pk), ("line__deleted", i2.pk), ("order__deleted", o.pk),
                          ("customer__deleted", c.pk or got[-1].pk)]
    assert got[0].payload == {"id": i1.pk, "sku": "a", "qty": 1, "order": o.pk}
    assert got[2].payload["number"] == 7


def test_delete_set_null_is_an_update(broker):
    p = Product.objects.create(sku="p1", name="P")
    r = Review.objects.create(product=p, text="good")
    broker.drain()
    p.delete()
    got = broker.drain()
    assert pairs(got) == [("review__updated", r.pk), ("product__deleted", p.pk or got[1].pk)]
    assert got[0].payload == {"id": r.pk, "product": None, "text": "good"}


def test_queryset_update_one_event_per_row(broker):
    c = Customer.objects.create(name="Ann")
    orders = [Order.objects.create(customer=c, number=n) for n in range(5)]
    broker.drain()
    assert Order.objects.filter(number__gte=2).update(status="late", number=F("number") + 100) == 3
    got = broker.drain()
    assert pairs(got) == [("order__updated", o.pk) for o in orders[2:]]
    assert [r.payload["number"] for r in got] == [102, 103, 104]
    assert Order.objects.filter(number__gte=1000).update(status="x") == 0
    assert broker.drain() == []


def test_queryset_update_join_filter(broker):
    ann, bob = Customer.objects.create(name="Ann"), Customer.objects.create(name="Bob")
    o1 = Order.objects.create(customer=ann, number=1)
    Order.objects.create(customer=bob, number=2)
    broker.drain()
    assert Order.objects.filter(customer__name="Ann").update(status="vip") == 1
    assert pairs(broker.drain()) == [("order__updated", o1.pk)]


def test_queryset_delete_and_fast_delete(broker):
    counters = Counter.objects.bulk_create([Counter(value=v) for v in range(6)])
    broker.drain()
    # Counter has no relations: Django deletes it with one DELETE ... WHERE value < 3.
    assert Counter.objects.filter(value__lt=3).delete() == (3, {"shop.Counter": 3})
    got = broker.drain()
    assert pairs(got) == [("counter__deleted", c.pk) for c in counters[:3]]
    assert [r.payload for r in got] == [{"id": c.pk, "value": c.value} for c in counters[:3]]
    # A single instance goes through the fast path in autocommit.
    counters[5].delete()
    assert names(broker.drain()) == ["counter__deleted"]


def test_bulk_create(broker):
    made = Product.objects.bulk_create([Product(sku=f"s{i}", name=f"n{i}") for i in range(4)])
    got = broker.drain()
    assert names(got) == ["product__created"] * 4
    assert [r.payload["sku"] for r in got] == ["s0", "s1", "s2", "s3"]
    if made[0].pk is not None:
        assert [r.pk for r in got] == [p.pk for p in made]


def test_bulk_create_ignore_conflicts_only_new_rows(broker):
    Product.objects.create(sku="dup", name="old")
    broker.drain()
    Product.objects.bulk_create([Product(sku="dup", name="x"), Product(sku="new", name="y")], ignore_conflicts=True)
    got = broker.drain()
    assert names(got) == ["product__created"]
    assert got[0].payload["sku"] == "new"


def test_bulk_create_update_conflicts(broker):
    old = Product.objects.create(sku="dup", name="old")
    broker.drain()
    kwargs = {} if MYSQL else {"unique_fields": ["sku"]}
    Product.objects.bulk_create(
        [Product(sku="dup", name="renamed"), Product(sku="fresh", name="y")],
        update_conflicts=True, update_fields=["name"], **kwargs,
    )
    got = sorted(broker.drain(), key=lambda r: r.payload["sku"])
    assert [(r.name, r.payload["sku"], r.payload["name"]) for r in got] == [
        ("product__updated", "dup", "renamed"), ("product__created", "fresh", "y"),
    ]
    assert got[0].pk == old.pk


def test_bulk_update(broker):
    products = [Product.objects.create(sku=f"b{i}", name="n") for i in range(3)]
    broker.drain()
    for p in products:
        p.stock = 10 + p.pk
    Product.objects.bulk_update(products, ["stock"])
    got = broker.drain()
    assert pairs(got) == [("product__updated", p.pk) for p in products]
    assert [r.payload["stock"] for r in got] == [10 + p.pk for p in products]


def test_get_or_create_and_update_or_create(broker):
    c, created = Customer.objects.get_or_create(name="Ann", defaults={"email": "a@x"})
    assert created
    Customer.objects.get_or_create(name="Ann")
    Customer.objects.update_or_create(name="Ann", defaults={"email": "b@x"})
    Customer.objects.update_or_create(name="Bob", defaults={"email": "c@x"})
    got = broker.drain()
    assert names(got) == ["customer__created", "customer__updated", "customer__created"]
    assert got[1].payload["email"] == "b@x"


def test_raw_sql_any_quoting_and_case(broker):
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute("insert into shop_counter (value) values (%s)", [1])
        cursor.execute(f"INSERT INTO {qn('shop_counter')} ({qn('value')}) VALUES (%s), (%s)", [2, 3])
        # MySQL table names are case-sensitive on Linux; keywords are not, anywhere.
        table = "shop_counter" if MYSQL else "SHOP_COUNTER"
        cursor.execute(f"Update {table} set value = value * 10 where value >= %s", [2])
        assert cursor.rowcount == 2
        cursor.execute(f"DELETE FROM {qn('shop_counter')} WHERE {qn('value')} = %s", [1])
        assert cursor.rowcount == 1
        cursor.executemany("INSERT INTO shop_counter (value) VALUES (%s)", [(7,), (8,)])
    got = broker.drain()
    assert names(got) == ["counter__created"] * 3 + ["counter__updated"] * 2 + ["counter__deleted"] + ["counter__created"] * 2
    assert [r.payload["value"] for r in got] == [1, 2, 3, 20, 30, 1, 7, 8]


def test_raw_sql_on_unregistered_table_and_selects_produce_nothing(broker):
    Note.objects.create(text="x")
    Note.objects.update(text="y")
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM shop_counter")
        cursor.execute("UPDATE shop_note SET text = %s", ["z"])
    list(Customer.objects.all())
    assert broker.drain() == []


def test_multi_table_inheritance_most_derived_registered_model(broker):
    r = Restaurant.objects.create(name="R", serves_pizza=True)
    r.name = "R2"
    r.save()
    Place.objects.filter(pk=r.pk).update(address="main st")   # parent table only
    Restaurant.objects.filter(pk=r.pk).update(serves_pizza=False)   # child table only
    plain = Place.objects.create(name="P")
    bar = Bar.objects.create(name="B")            # Bar is not registered: a Place event
    pizzeria = Pizzeria.objects.create(name="Z")  # Pizzeria is not registered: a Restaurant event
    got = broker.drain()
    assert pairs(got) == [
        ("restaurant__created", r.pk), ("restaurant__updated", r.pk), ("restaurant__updated", r.pk),
        ("restaurant__updated", r.pk), ("place__created", plain.pk), ("place__created", bar.pk),
        ("restaurant__created", pizzeria.pk),
    ]
    assert got[0].payload == {"id": r.pk, "name": "R", "address": "", "serves_pizza": True}
    assert got[2].payload == {"id": r.pk, "name": "R2", "address": "main st", "serves_pizza": True}
    assert got[3].payload == {"id": r.pk, "name": "R2", "address": "main st", "serves_pizza": False}
    r.delete()
    got = broker.drain()
    assert names(got) == ["restaurant__deleted"]
    assert got[0].payload == {"id": got[0].pk, "name": "R2", "address": "main st", "serves_pizza": False}


def test_status_field_event_prefix_and_service_name(broker):
    p = Payment.objects.create(amount=5)
    p.status = "paid"
    p.save()
    p.delete()
    Refund.objects.create(amount=1)
    i = Item.objects.create(order=Order.objects.create(customer=Customer.objects.create(name="c"), number=1), sku="s")
    got = broker.drain()
    mine = f"{broker.service}.events"
    assert [(r.exchange, r.name) for r in got] == [
        (mine, "payment__pending"), (mine, "payment__paid"), (mine, "payment__deleted"),
        ("billing.events", "refund__created"), (mine, "customer__created"), (mine, "order__created"),
        (mine, "line__created"),
    ]
    assert got[1].headers["dbevents.action"] == "updated"
    assert got[-1].payload["id"] == i.pk


def test_uuid_primary_key(broker):
    c = Coupon.objects.create(code="A")
    Coupon.objects.filter(pk=c.pk).update(code="B")
    Coupon.objects.bulk_create([Coupon(code="C")])
    pk = c.pk
    c.delete()
    got = broker.drain()
    assert names(got) == ["coupon__created", "coupon__updated", "coupon__created", "coupon__deleted"]
    assert got[0].pk == str(pk) and got[0].payload["id"] == str(pk) and got[3].pk == str(pk)
    assert isinstance(uuid.UUID(got[2].pk), uuid.UUID)
