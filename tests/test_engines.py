"""Engines: the three wrappers, any other engine wrapped, and what is deliberately not captured
(migrate, flush) or is (loaddata)."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate
from django.test import override_settings

from dbevents.capture import CaptureMixin
from dbevents.testing import capture_events
from tests.custom_backend.base import DatabaseWrapper as CustomWrapper
from tests.shop.models import Counter, Customer


def test_stock_engines_are_the_stock_wrapper_plus_capture():
    connection = connections["default"]
    assert isinstance(connection, CaptureMixin)
    stock = {"sqlite": "sqlite3", "postgresql": "postgresql", "mysql": "mysql"}[connection.vendor]
    assert type(connection).__bases__[1].__module__ == f"django.db.backends.{stock}.base"
    assert connection.execute_wrappers[0] is connection.dbevents


@pytest.mark.django_db(transaction=True, databases=["default", "wrapped", "mixin"])
@pytest.mark.parametrize("alias", ["wrapped", "mixin"])
def test_another_engine_wrapped(alias):
    conn = connections[alias]
    assert isinstance(conn, CaptureMixin) and isinstance(conn, CustomWrapper)
    assert conn.custom_marker == "custom engine"
    with capture_events() as events:
        c = Customer.objects.using(alias).create(name="x")
        Customer.objects.using(alias).filter(pk=c.pk).update(name="y")
    assert [(e.name, e.headers["dbevents.alias"], e.payload["name"]) for e in events] == [
        ("customer__created", alias, "x"), ("customer__updated", alias, "y"),
    ]


def test_generic_route_without_engine_is_a_clear_error():
    from dbevents.backends.generic.base import DatabaseWrapper

    with pytest.raises(ImproperlyConfigured) as exc:
        DatabaseWrapper({"ENGINE": "dbevents.backends.generic", "NAME": ":memory:"}, "broken")
    assert str(exc.value) == (
        "DATABASES['broken'] uses ENGINE 'dbevents.backends.generic' but its 'DBEVENTS_WRAPPED_ENGINE' "
        "is None: set it to the engine to wrap, e.g. 'django.contrib.gis.db.backends.postgis'."
    )


@pytest.mark.django_db(transaction=True)
def test_migrate_is_not_captured():
    from django.apps import apps

    config = apps.get_app_config("shop")
    with capture_events() as events:
        pre_migrate.send(sender=config, app_config=config, verbosity=0, interactive=False, using="default",
                         apps=apps, plan=[])
        Customer.objects.create(name="written by a data migration")
        post_migrate.send(sender=config, app_config=config, verbosity=0, interactive=False, using="default",
                          apps=apps, plan=[])
        Customer.objects.create(name="after migrate")
    assert [e.payload["name"] for e in events] == ["after migrate"]


@pytest.mark.django_db(transaction=True)
def test_flush_is_not_captured(caplog):
    Counter.objects.create(value=1)
    with capture_events() as events:
        call_command("flush", interactive=False, verbosity=0)
    assert events == [] and Counter.objects.count() == 0
    assert "dbevents" not in caplog.text


@pytest.mark.django_db(transaction=True)
def test_loaddata_writes_are_events(tmp_path):
    fixture = tmp_path / "customers.json"
    fixture.write_text(json.dumps([{"model": "shop.customer", "pk": 900, "fields": {"name": "fixture", "email": ""}}]))
    with capture_events() as events:
        call_command("loaddata", str(fixture), verbosity=0)
        call_command("loaddata", str(fixture), verbosity=0)
    assert [(e.name, e.pk) for e in events] == [("customer__created", 900), ("customer__updated", 900)]


@pytest.mark.django_db(transaction=True)
def test_dbevents_enabled_false_captures_nothing():
    with override_settings(DBEVENTS_ENABLED=False), capture_events() as events:
        Customer.objects.create(name="x")
    assert events == []
