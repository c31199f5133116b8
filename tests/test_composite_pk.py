"""Models with a composite primary key (Django 5.2 ``CompositePrimaryKey``): captured like any
model, the pk header is the list of the key's parts, and registering one never affects the
writes of other models."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from dbevents.testing import capture_events
from tests.shop.models import Counter, Stock

pytestmark = pytest.mark.django_db(transaction=True)


def _seen(events):
    return sorted((e.name, e.pk, e.payload["quantity"]) for e in events if e.model == "shop.Stock")


def test_every_write_path_of_a_composite_key_model():
    with capture_events() as events:
        Stock.objects.create(warehouse="w1", sku="a", quantity=1)
        Stock.objects.bulk_create([Stock(warehouse="w1", sku="b", quantity=2), Stock(warehouse="w2", sku="a", quantity=3)])
        with transaction.atomic():
            item = Stock.objects.get(pk=("w1", "a"))
            item.quantity = 10
            item.save()
        Stock.objects.filter(warehouse="w1").update(quantity=20)
        Stock.objects.filter(sku="a").delete()
    assert _seen(events) == sorted([
        ("stock__created", ["w1", "a"], 1), ("stock__created", ["w1", "b"], 2), ("stock__created", ["w2", "a"], 3),
        ("stock__updated", ["w1", "a"], 10),
        ("stock__updated", ["w1", "a"], 20), ("stock__updated", ["w1", "b"], 20),
        ("stock__deleted", ["w1", "a"], 20), ("stock__deleted", ["w2", "a"], 3),
    ])


def test_raw_sql_on_a_composite_key_table():
    table = connection.ops.quote_name(Stock._meta.db_table)
    with capture_events() as events:
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} (warehouse, sku, quantity) VALUES (%s, %s, %s)", ["w9", "z", 5])
            cursor.execute(f"UPDATE {table} SET quantity = quantity + 1 WHERE warehouse = %s", ["w9"])
    assert _seen(events) == [("stock__created", ["w9", "z"], 5), ("stock__updated", ["w9", "z"], 6)]


def test_other_models_are_captured_beside_it():
    with capture_events() as events:
        Counter.objects.create(value=1)
        Stock.objects.create(warehouse="w3", sku="c")
    assert sorted(e.name for e in events) == ["counter__created", "stock__created"]
