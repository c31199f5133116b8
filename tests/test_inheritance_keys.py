"""Multi-table inheritance where a parent table's key is not the child's: multiple inheritance
(``Shop(Place, Tagged)``: its ``shop_tagged`` row has its own ``tag_id``) and a child with its
own primary key (``Kiosk.code``, ``place_ptr`` a plain parent link). The events carry every
field, from every table of the chain."""

from __future__ import annotations

import pytest
from django.db import transaction

from dbevents.testing import capture_events
from tests.shop.models import Kiosk, Place, Shop, Stall, Tagged

pytestmark = pytest.mark.django_db(transaction=True)


def test_multiple_inheritance_events_carry_both_parents():
    with capture_events() as events:
        shop = Shop.objects.create(name="corner", tag="green", opens=8)
    (created,) = events.named("shop__created")
    assert created.pk == shop.pk
    assert created.payload["name"] == "corner" and created.payload["tag"] == "green"
    assert created.payload["opens"] == 8
    with capture_events() as events:
        with transaction.atomic():
            shop.tag, shop.opens = "blue", 10
            shop.save()
    (updated,) = events.named("shop__updated")
    assert updated.payload["tag"] == "blue" and updated.payload["opens"] == 10
    with capture_events() as events:
        Shop.objects.filter(pk=shop.pk).update(opens=11)  # only the child table
    assert events.named("shop__updated")[0].payload["tag"] == "blue"
    with capture_events() as events:
        # Only the linked parent's table: the event is the Shop's, under the Shop's key.
        Tagged.objects.filter(tag_id=shop.tagged_ptr_id).update(tag="red")
    assert [(e.name, e.pk, e.payload["tag"]) for e in events] == [("shop__updated", shop.pk, "red")]


def test_keys_that_differ_between_the_tables():
    Place.objects.create(name="offset")  # shop_place ids run ahead of shop_tagged ids
    with capture_events() as events:
        shop = Shop.objects.create(name="corner", tag="green")
    assert shop.pk != shop.tagged_ptr_id
    assert [(e.name, e.pk, e.payload["tag"]) for e in events] == [("shop__created", shop.pk, "green")]


def test_child_with_its_own_primary_key():
    with capture_events() as events:
        kiosk = Kiosk.objects.create(code=44, name="k", address="station")
    (created,) = events.named("kiosk__created")
    assert created.pk == 44 == kiosk.pk
    assert created.payload["name"] == "k" and created.payload["address"] == "station"
    with capture_events() as events:
        Kiosk.objects.filter(code=44).update(name="k2")  # the parent table, through the child
    names = events.names()
    assert "kiosk__updated" in names or "place__updated" in names, names


def test_a_linked_parent_below_an_intermediate_table_belongs_to_the_right_model():
    Place.objects.create(name="offset")
    shop = Shop.objects.create(name="shop", tag="s")
    with capture_events() as events:
        stall = Stall.objects.create(name="stall", tag="t", pitch=3)
    assert [(e.name, e.pk, e.payload["tag"], e.payload["pitch"]) for e in events] == [
        ("stall__created", stall.pk, "t", 3)]
    with capture_events() as events:
        Tagged.objects.filter(tag_id__in=[shop.tagged_ptr_id, stall.tagged_ptr_id]).update(tag="u")
    assert sorted((e.name, e.pk, e.payload["tag"]) for e in events) == sorted(
        [("shop__updated", shop.pk, "u"), ("stall__updated", stall.pk, "u")])
