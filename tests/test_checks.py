"""System checks: each bad setting gives its id, the bad value and a hint."""

from __future__ import annotations

import pytest
from django.core import checks
from django.test import override_settings

pytestmark = pytest.mark.django_db


def run() -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks(tags=["dbevents"])]


def ids(messages):
    return [m.id for m in messages]


def test_project_settings_pass():
    assert run() == []


@pytest.mark.parametrize(
    "value, check_id, message, hint",
    [
        ("shop.Order", "dbevents.E001", "MODELS_CRUD_EVENT is 'shop.Order'; expected a list of dicts such as [{\"model\": \"shop.Order\"}].",
         'Write MODELS_CRUD_EVENT = [{"model": "app_label.ModelName"}, ...].'),
        (["shop.Order"], "dbevents.E001", "MODELS_CRUD_EVENT[0] must be a dict, not str 'shop.Order'.",
         'Write {"model": "app_label.ModelName"}.'),
        ([{"model": "shop.Nope"}], "dbevents.E002",
         "MODELS_CRUD_EVENT[0] names model 'shop.Nope', which does not exist (App 'shop' doesn't have a 'Nope' model.).",
         "Use the app label and model class name of an installed app, e.g. 'shop.Order'."),
        ([{"model": "Order"}], "dbevents.E002",
         "MODELS_CRUD_EVENT[0] has model 'Order'; expected an 'app_label.ModelName' string.",
         'Write {"model": "shop.Order"}.'),
        ([{"model": "shop.Order", "serializer": "shop.nope.Serializer"}], "dbevents.E003",
         "MODELS_CRUD_EVENT[0] (shop.Order) has serializer 'shop.nope.Serializer', which cannot be imported: "
         "No module named 'shop'.",
         "Give the dotted path of a rest_framework Serializer class."),
        ([{"model": "shop.Order", "serializer": "tests.shop.models.Order"}], "dbevents.E003",
         "MODELS_CRUD_EVENT[0] (shop.Order) has serializer 'tests.shop.models.Order', which is not a "
         "rest_framework serializer class.",
         "Point it at a subclass of rest_framework.serializers.Serializer."),
        ([{"model": "shop.Payment", "status_field": "state"}], "dbevents.E004",
         "MODELS_CRUD_EVENT[0] has status_field 'state', which is not a field of shop.Payment.",
         "Use one of: amount, id, order, status."),
        ([{"model": "shop.Order"}, {"model": "shop.Order"}], "dbevents.E005",
         "MODELS_CRUD_EVENT[1] registers 'shop.Order' again (first in MODELS_CRUD_EVENT[0]).",
         "Keep one entry per model (proxies share their model's table)."),
        ([{"model": "shop.Order", "serialiser": "x.Y"}], "dbevents.E008",
         "MODELS_CRUD_EVENT[0] has unknown key(s) 'serialiser'.",
         "Known keys: event_name_prefix, model, serializer, service_name, status_field."),
        ([{"model": "shop.Order", "event_name_prefix": ""}], "dbevents.E010",
         "MODELS_CRUD_EVENT[0] has event_name_prefix ''; expected a non-empty string.",
         "Remove 'event_name_prefix' to use the default, or give a string."),
    ],
)
def test_models_crud_event_errors(value, check_id, message, hint):
    with override_settings(MODELS_CRUD_EVENT=value):
        found = [m for m in run() if m.id == check_id]
    assert [(m.msg, m.hint) for m in found] == [(message, hint)]


def test_missing_service_name():
    with override_settings(SERVICE_NAME=None):
        found = [m for m in run() if m.id == "dbevents.E006"]
    assert [m.msg for m in found] == [
        "SERVICE_NAME is None, but MODELS_CRUD_EVENT has models without a 'service_name'."
    ]
    assert "SERVICE_NAME = 'your_service'" in found[0].hint


def test_service_name_per_model_is_enough():
    with override_settings(SERVICE_NAME=None, MODELS_CRUD_EVENT=[{"model": "shop.Order", "service_name": "orders"}]):
        assert "dbevents.E006" not in ids(run())


def test_missing_amqp_uri():
    with override_settings(NAMEKO_CONFIG={}):
        assert [m.msg for m in run() if m.id == "dbevents.E007"] == [
            "No AMQP_URI: neither NAMEKO_CONFIG['AMQP_URI'] nor settings.AMQP_URI is set."
        ]


def test_top_level_amqp_uri_is_accepted():
    with override_settings(NAMEKO_CONFIG={}, AMQP_URI="amqp://guest:guest@localhost:5672/"):
        assert "dbevents.E007" not in ids(run())
        from dbevents import conf

        assert conf.nameko_config()["AMQP_URI"] == "amqp://guest:guest@localhost:5672/"


def test_bad_dbevents_setting():
    with override_settings(DBEVENTS_PUBLISH_RETRIES=0, DBEVENTS_TRANSPORT="nope.Transport"):
        found = run()
    assert [m.msg for m in found if m.id == "dbevents.E011"] == [
        "DBEVENTS_PUBLISH_RETRIES is 0; expected an integer >= 1."]
    assert [m.msg for m in found if m.id == "dbevents.E016"] == [
        "DBEVENTS_TRANSPORT is 'nope.Transport', which cannot be imported: No module named 'nope'."]


def test_no_database_uses_a_dbevents_engine(monkeypatch):
    from dbevents import checks as dbchecks

    monkeypatch.setattr(dbchecks, "_capturing_aliases", lambda: [])
    found = [m for m in run() if m.id == "dbevents.W001"]
    assert len(found) == 1 and found[0].level == checks.WARNING
    assert found[0].msg.startswith("MODELS_CRUD_EVENT registers models, but no database uses a dbevents ENGINE")
    assert "dbevents.backends.postgresql" in found[0].hint


def test_bad_entries_never_raise_at_runtime(caplog):
    from tests.shop.models import Customer

    with override_settings(MODELS_CRUD_EVENT=[{"model": "shop.Nope"}, "junk", {"model": "shop.Customer"}]):
        from dbevents.testing import capture_events

        with capture_events() as events:
            Customer.objects.create(name="x")
    assert events.names() == ["customer__created"]
    assert "MODELS_CRUD_EVENT entry {'model': 'shop.Nope'} is ignored" in caplog.text
