"""Regression tests from the review of capture: shapes of raw SQL, savepoints, inheritance
merging, cursor results, upserts, and failures that must not change what the database keeps."""

from __future__ import annotations

import logging

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from rest_framework import serializers

from dbevents.testing import capture_events, disable_dispatcher
from tests.shop.models import Counter, Customer, Note, Product, Restaurant

pytestmark = pytest.mark.django_db(transaction=True)
VENDOR = connection.vendor


class QueryingSerializer(serializers.ModelSerializer):
    """Its query fails: on PostgreSQL that aborts the transaction it runs in."""

    broken = serializers.SerializerMethodField()

    class Meta:
        model = Counter
        fields = ("id", "value", "broken")

    def get_broken(self, obj):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM dbevents_no_such_table")
        return None


def test_failing_serializer_query_never_turns_commit_into_rollback(caplog):
    entries = [e for e in settings.MODELS_CRUD_EVENT if e["model"] != "shop.Counter"]
    entries.append({"model": "shop.Counter", "serializer": "tests.test_edge_cases.QueryingSerializer"})
    with override_settings(MODELS_CRUD_EVENT=entries), capture_events() as events:
        with transaction.atomic():
            Customer.objects.create(name="kept")
            Counter.objects.create(value=1)
    assert Customer.objects.count() == 1 and Counter.objects.count() == 1
    assert events.names() == ["customer__created"]
    assert "serializer of shop.Counter failed" in caplog.text


def test_manual_savepoint_rollback_drops_its_events():
    with capture_events() as events:
        with transaction.atomic():
            Customer.objects.create(name="kept")
            create = getattr(transaction, "savepoint_create", None) or transaction.savepoint  # renamed in 6.1
            sid = create()
            Counter.objects.create(value=1)
            transaction.savepoint_rollback(sid)
            Counter.objects.create(value=2)
    assert [(e.name, e.payload.get("value")) for e in events] == [
        ("customer__created", None), ("counter__created", 2),
    ]


def test_two_saves_of_an_inherited_model_are_two_events():
    r = Restaurant.objects.create(name="r", serves_pizza=False)
    with capture_events() as events:
        with transaction.atomic():
            r.serves_pizza = True
            r.save(update_fields=["serves_pizza"])
            r.name = "renamed"
            r.save(update_fields=["name"])
    assert [(e.name, e.payload["name"], e.payload["serves_pizza"]) for e in events] == [
        ("restaurant__updated", "r", True), ("restaurant__updated", "renamed", True),
    ]


def test_inherited_model_events_do_not_merge_across_a_rolled_back_savepoint():
    r = Restaurant.objects.create(name="r", serves_pizza=False)
    with capture_events() as events:
        with transaction.atomic():
            Restaurant.objects.filter(pk=r.pk).update(name="outer")
            try:
                with transaction.atomic():
                    Restaurant.objects.filter(pk=r.pk).update(serves_pizza=True)
                    raise ValueError
            except ValueError:
                pass
    assert [(e.payload["name"], e.payload["serves_pizza"]) for e in events] == [("outer", False)]


@pytest.mark.parametrize("comment", ["-- bump stock", "/* bump */"])
def test_trailing_comment(comment):
    p = Product.objects.create(sku="a", name="a")
    with capture_events() as events:
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE shop_product SET stock = 7 WHERE id = %s {comment}", [p.pk])
            assert cursor.rowcount == 1
    assert events.names() == ["product__updated"] and events[0].payload["stock"] == 7


def test_percent_literal_in_where_without_where_params():
    Product.objects.create(sku="a", name="50%", stock=1)
    with capture_events() as events:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE shop_product SET stock = %s WHERE name = '50%%'", [9])
            assert cursor.rowcount == 1
    assert Product.objects.get().stock == 9
    assert events.names() == ["product__updated"]


def test_parameters_after_the_where_clause():
    if VENDOR != "mysql":
        pytest.skip("UPDATE ... ORDER BY ... LIMIT is MySQL/MariaDB syntax")
    for i in range(3):
        Product.objects.create(sku=f"s{i}", name="n", stock=1)
    with capture_events() as events:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE shop_product SET stock = %s WHERE stock > %s ORDER BY id LIMIT %s", [5, 0, 2])
            assert cursor.rowcount == 2
    assert events.names() == ["product__updated"] * 2


def test_schema_qualified_table_name():
    p = Product.objects.create(sku="a", name="a")
    schema = {"postgresql": "public", "sqlite": "main", "mysql": connection.settings_dict["NAME"]}[VENDOR]
    with capture_events() as events:
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {schema}.shop_product SET stock = 7 WHERE id = %s", [p.pk])
    assert events.names() == ["product__updated"]


def test_lastrowid_of_a_raw_insert():
    if VENDOR == "postgresql":
        pytest.skip("psycopg cursors have no lastrowid")
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO shop_counter (value) VALUES (%s)", [5])
        last = cursor.lastrowid
    assert last == Counter.objects.get().pk


def test_mysql_upsert_rowcount():
    if VENDOR != "mysql":
        pytest.skip("ON DUPLICATE KEY UPDATE is MySQL/MariaDB syntax")
    Product.objects.create(sku="a", name="old")
    with capture_events() as events, connection.cursor() as cursor:
        cursor.execute("INSERT INTO shop_product (sku, name, stock, data) VALUES (%s, %s, 0, '{}') "
                       "ON DUPLICATE KEY UPDATE name = VALUE(name)", ["a", "new"])
        assert cursor.rowcount == 2
    assert events.names() == ["product__updated"]


def test_upsert_conflicting_on_another_unique_key_is_an_update():
    if VENDOR == "mysql":
        pytest.skip("MySQL's bulk_create takes no unique_fields")
    old = Product.objects.create(sku="a", name="old")
    with capture_events() as events:
        Product.objects.bulk_create([Product(id=old.pk + 500, sku="a", name="new")], update_conflicts=True,
                                    unique_fields=["sku"], update_fields=["name"])
    assert [(e.name, e.pk) for e in events] == [("product__updated", old.pk)]


def test_multi_table_delete_with_duplicate_join_rows_and_alias():
    if VENDOR != "mysql":
        pytest.skip("DELETE t FROM t JOIN ... is MySQL/MariaDB syntax")
    a, b = Counter.objects.create(value=1), Counter.objects.create(value=2)
    Note.objects.create(text="k")
    Note.objects.create(text="k")
    with capture_events() as events, connection.cursor() as cursor:
        cursor.execute("DELETE shop_counter FROM shop_counter INNER JOIN shop_note ON shop_note.text = %s "
                       "WHERE shop_counter.value = %s", ["k", 1])
        cursor.execute("DELETE c FROM shop_counter AS c INNER JOIN shop_note n ON n.text = 'k' WHERE c.value = %s", [2])
    assert [(e.name, e.pk) for e in events] == [("counter__deleted", a.pk), ("counter__deleted", b.pk)]


def test_a_muted_statement_does_not_change_an_earlier_events_row():
    p = Product.objects.create(sku="a", name="a", stock=0)
    with capture_events() as events:
        with transaction.atomic():
            Product.objects.filter(pk=p.pk).update(stock=1)
            with disable_dispatcher():
                Product.objects.filter(pk=p.pk).update(stock=2)
    assert [e.payload["stock"] for e in events] == [1]


def test_reads_starting_with_a_cte_are_not_warned_about(caplog):
    caplog.set_level(logging.WARNING, logger="dbevents")
    with connection.cursor() as cursor:
        cursor.execute("WITH p AS (SELECT id FROM shop_product) SELECT COUNT(*) FROM p")
        if VENDOR != "mysql":  # MariaDB has no data-modifying CTEs
            cursor.execute("WITH p AS (SELECT 1) DELETE FROM shop_product WHERE id IN (SELECT * FROM p)")
    # A read-only CTE before a DELETE: the DELETE is captured like any other.
    assert [r.getMessage() for r in caplog.records] == []


def test_cursor_methods_after_a_captured_statement_reach_the_driver():
    p = Product.objects.create(sku="a", name="a")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE shop_product SET stock = 1 WHERE id = %s", [p.pk])
        cursor.execute("SELECT stock FROM shop_product WHERE id = %s", [p.pk])
        assert list(cursor.fetchall()) == [(1,)]
        Customer.objects.create(name="x")
        cursor.execute("SELECT COUNT(*) FROM shop_customer")
        assert cursor.fetchone() == (1,)
