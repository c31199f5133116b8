"""dbevents.testing: disable_dispatcher, disable_model_obj_dispatcher, capture_events."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.test import TestCase

from dbevents.testing import capture_events, disable_dispatcher, disable_model_obj_dispatcher
from tests.conftest import names
from tests.shop.models import Customer, Order, Product


class CaptureInTestCase(TestCase):
    """Django's TestCase never commits: collect() builds the pending events on demand."""

    def test_collect_mid_test_and_at_exit(self):
        with capture_events() as events:
            c = Customer.objects.create(name="a")
            self.assertEqual(events.collect().names(), ["customer__created"])
            c.name = "b"
            c.save()
        self.assertEqual(events.names(), ["customer__created", "customer__updated"])
        self.assertEqual(events[1].payload["name"], "b")

    def test_only_statements_inside_the_block(self):
        Customer.objects.create(name="before")
        with capture_events() as events:
            Customer.objects.create(name="inside")
        self.assertEqual([e.payload["name"] for e in events], ["inside"])

    def test_captureoncommitcallbacks_is_not_needed(self):
        with self.captureOnCommitCallbacks(execute=True), capture_events() as events:
            Product.objects.create(sku="s", name="n")
        self.assertEqual(events.names(), ["product__created"])


@pytest.mark.django_db
def test_pytest_fixture(dbevents_events):
    Customer.objects.create(name="x")
    assert dbevents_events.collect().names() == ["customer__created"]


@pytest.mark.django_db(transaction=True)
def test_committed_events_are_captured_once_even_after_collect():
    with capture_events() as events:
        with transaction.atomic():
            Customer.objects.create(name="x")
            events.collect()
        assert events.names() == ["customer__created"]
    assert events.names() == ["customer__created"]


@pytest.mark.django_db(transaction=True)
def test_disable_dispatcher_context_manager_nests_and_restores():
    with capture_events() as events:
        with disable_dispatcher():
            Customer.objects.create(name="muted")
            with disable_dispatcher(models_list=["shop.Order"]):
                Customer.objects.create(name="still muted")
            Customer.objects.create(name="muted again")
        Customer.objects.create(name="heard")
    assert [e.payload["name"] for e in events] == ["heard"]


@pytest.mark.django_db(transaction=True)
def test_models_list_mutes_only_those_models_case_insensitively():
    c = Customer.objects.create(name="c")
    with capture_events() as events, disable_dispatcher(models_list=["SHOP.order"]):
        Order.objects.create(customer=c, number=1)
        Customer.objects.filter(pk=c.pk).update(name="d")
    assert names(events) == ["customer__updated"]


@pytest.mark.django_db(transaction=True)
def test_muting_applies_when_the_statement_runs_not_when_it_commits():
    with capture_events() as events:
        with transaction.atomic():
            with disable_dispatcher():
                Customer.objects.create(name="muted")
            Customer.objects.create(name="heard")
    assert [e.payload["name"] for e in events] == ["heard"]


@pytest.mark.django_db(transaction=True)
def test_disable_model_obj_dispatcher_mutes_one_object():
    a, b = Customer.objects.create(name="a"), Customer.objects.create(name="b")
    with capture_events() as events:
        with disable_model_obj_dispatcher(b):
            Customer.objects.update(name="z")
    assert [e.pk for e in events] == [a.pk]


def test_does_not_touch_signals():
    before = (list(post_save.receivers), list(post_delete.receivers))
    with disable_dispatcher():
        during = (list(post_save.receivers), list(post_delete.receivers))
    assert before == during == (list(post_save.receivers), list(post_delete.receivers))


@disable_dispatcher()
@pytest.mark.django_db(transaction=True)
def test_function_decorator():
    with capture_events() as events:
        Customer.objects.create(name="x")
    assert events == []


@pytest.mark.django_db(transaction=True)
def test_async_function_decorator():
    def create_and_close():
        from django.db import connections

        try:
            Customer.objects.create(name="x")
        finally:
            connections.close_all()  # the executor thread outlives the test

    @disable_dispatcher()
    async def muted_create():
        await sync_to_async(create_and_close)()

    with capture_events() as events:
        asyncio.run(muted_create())
        Customer.objects.create(name="y")
    assert [e.payload["name"] for e in events] == ["y"]


@pytest.mark.django_db(transaction=True)
def test_muting_is_per_thread():
    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip("in-memory SQLite allows one writer at a time")
    muted_in = threading.Event()
    other_done = threading.Event()
    seen = []

    def other_thread():
        from django.db import connections

        muted_in.wait(5)
        try:
            with capture_events() as events:
                Customer.objects.create(name="other thread")
            seen.extend(events)
        finally:
            connections.close_all()
            other_done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with disable_dispatcher():
        muted_in.set()
        other_done.wait(10)
    thread.join()
    assert names(seen) == ["customer__created"]
