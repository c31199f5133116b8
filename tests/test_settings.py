"""Configuration never takes down the safety net: every setting is validated (a check error
naming the value, and at runtime the default with one ERROR, never a weaker guarantee), a broker
URI that does not parse is caught without a fragment of its password reaching any log line, the
outbox or ``dbevents_status``, and the relay and status commands run despite check errors that
do not concern them."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import override_settings

from dbevents import conf, publisher
from dbevents.checks import check_delivery, check_models
from dbevents.models import OutboxMessage
from dbevents.testing import capture_events
from tests.shop.models import Customer

pytestmark = pytest.mark.django_db(transaction=True)

# A password with every character that splits a URI in the wrong place, in pieces long enough
# to be recognised wherever a fragment of it shows up.
PIECES = ("zq8KxV", "Wv7JmQ", "Tr5NpL", "Hb3YcD")
PASSWORD = f"{PIECES[0]}/{PIECES[1]}#{PIECES[2]}?{PIECES[3]}"


def leaks(text: str) -> list[str]:
    """The pieces of the password that appear in ``text``."""
    return [p for p in PIECES if p in text]


def check_errors() -> list:
    return [m for m in [*check_models(), *check_delivery()] if m.is_serious()]


def test_every_setting_has_a_validator_that_accepts_its_default():
    assert set(conf.VALIDATORS) == set(conf.DEFAULTS)
    for name, default in conf.DEFAULTS.items():
        assert conf.problem(name, default) is None, name


BAD_VALUES = [
    ("DBEVENTS_PUBLISH_BATCH_SIZE", "abc", "DBEVENTS_PUBLISH_BATCH_SIZE is 'abc'; expected an integer >= 1"),
    ("DBEVENTS_PUBLISH_BATCH_SIZE", 0, "DBEVENTS_PUBLISH_BATCH_SIZE is 0; expected an integer >= 1"),
    ("DBEVENTS_PUBLISH_BATCH_SIZE", 10.5, "DBEVENTS_PUBLISH_BATCH_SIZE is 10.5; expected an integer >= 1"),
    ("DBEVENTS_QUEUE_SIZE", True, "DBEVENTS_QUEUE_SIZE is True; expected an integer >= 1"),
    ("DBEVENTS_PUBLISH_RETRIES", "3", "DBEVENTS_PUBLISH_RETRIES is '3'; expected an integer >= 1"),
    ("DBEVENTS_MAX_IN_FLIGHT", 0, "DBEVENTS_MAX_IN_FLIGHT is 0; expected an integer >= 1"),
    ("DBEVENTS_PUBLISH_RETRY_DELAY", -1, "DBEVENTS_PUBLISH_RETRY_DELAY is -1; expected a number of seconds >= 0"),
    ("DBEVENTS_PUBLISH_RETRY_MAX_DELAY", "10", "DBEVENTS_PUBLISH_RETRY_MAX_DELAY is '10'; expected a number "
                                               "of seconds >= 0"),
    ("DBEVENTS_SHUTDOWN_TIMEOUT", None, "DBEVENTS_SHUTDOWN_TIMEOUT is None; expected a number of seconds >= 0"),
    ("DBEVENTS_CONNECT_TIMEOUT", 0, "DBEVENTS_CONNECT_TIMEOUT is 0; expected a number > 0"),
    ("DBEVENTS_CONFIRM_TIMEOUT", "ten", "DBEVENTS_CONFIRM_TIMEOUT is 'ten'; expected a number > 0"),
    ("DBEVENTS_OUTBOX_LEASE", -5.0, "DBEVENTS_OUTBOX_LEASE is -5.0; expected a number > 0"),
    ("DBEVENTS_OUTBOX_RETENTION", "7d", "DBEVENTS_OUTBOX_RETENTION is '7d'; expected a number of seconds >= 0 "
                                        "or None"),
    ("DBEVENTS_TCP_USER_TIMEOUT", 0, "DBEVENTS_TCP_USER_TIMEOUT is 0; expected a number > 0 or None"),
    ("DBEVENTS_ENABLED", "yes", "DBEVENTS_ENABLED is 'yes'; expected True or False"),
    ("DBEVENTS_PUBLISH_MANDATORY", 1, "DBEVENTS_PUBLISH_MANDATORY is 1; expected True or False"),
    ("DBEVENTS_TRANSPORT", None, "DBEVENTS_TRANSPORT is None; expected the dotted path of a transport class"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_an_invalid_setting_is_a_check_error_and_its_default_at_runtime(name, value, message, caplog):
    with override_settings(**{name: value}):
        found = [m for m in check_errors() if m.id == "dbevents.E011"]
        assert [m.msg for m in found] == [f"{message}."]
        assert found[0].hint == (f"Remove {name} to use the default {conf.DEFAULTS[name]!r}; until then "
                                 "dbevents uses the default.")
        assert conf.get(name) == conf.DEFAULTS[name]
        assert conf.get(name) == conf.DEFAULTS[name]   # logged once, not at every use
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [f"dbevents: {message}; using the default {conf.DEFAULTS[name]!r} instead (see manage.py check)"]


def test_a_bogus_delivery_mode_keeps_the_outbox_guarantee(caplog):
    with override_settings(DBEVENTS_DELIVERY="bogus"):
        [error] = [m for m in check_errors() if m.id == "dbevents.E014"]
        assert error.msg == "DBEVENTS_DELIVERY is 'bogus'; expected 'outbox' or 'direct'."
        assert conf.outbox_enabled()
        with capture_events(publish=True):
            Customer.objects.create(name="kept")
        assert publisher.wait(30)
    # The event went through the outbox (at-least-once), not from memory (at-most-once).
    assert OutboxMessage.objects.filter(event_key__startswith="shop.Customer:").count() == 1


@pytest.mark.rabbitmq
@pytest.mark.parametrize("setting", [
    {"DBEVENTS_PUBLISH_BATCH_SIZE": "abc"}, {"DBEVENTS_QUEUE_SIZE": "many"}, {"DBEVENTS_PUBLISH_RETRIES": None},
    {"DBEVENTS_MAX_IN_FLIGHT": "x"}, {"DBEVENTS_CONFIRM_TIMEOUT": "soon"}, {"DBEVENTS_TCP_USER_TIMEOUT": "1s"},
], ids=lambda s: next(iter(s)))
def test_events_are_published_despite_an_invalid_setting(broker, setting):
    with override_settings(**setting):
        with transaction.atomic():
            first = Customer.objects.create(name="a")
            second = Customer.objects.create(name="b")
        Customer.objects.filter(pk=first.pk).update(name="a2")
        assert publisher.wait(30)
        received = broker.drain()
    assert sorted((r.name, r.pk) for r in received) == sorted(
        [("customer__created", first.pk), ("customer__created", second.pk), ("customer__updated", first.pk)])
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


BAD_URIS = [
    (f"amqp://guest:{PIECES[0]}/{PIECES[1]}@127.0.0.1:5672/", "port is not a number"),
    (f"amqp://guest:{PIECES[0]}#{PIECES[1]}@127.0.0.1:5672/", "port is not a number"),
    (f"amqp://guest:{PIECES[0]}?{PIECES[1]}@127.0.0.1:5672/", "port is not a number"),
    (f"amqp://guest:{PASSWORD}@127.0.0.1:5672/", "port is not a number"),
    (f"amqp://guest:{PIECES[0]}@127.0.0.1:5672/#{PIECES[1]}", "characters after its host"),
    (f"amqp://guest:{PIECES[0]}@127.0.0.1:5672/?x={PIECES[1]}@", "characters after its host"),
    (f"amqp://{PIECES[0]}@/{PIECES[1]}", "no host"),
    (f"amqp://guest:{PIECES[0]}@[127.0.0.1:5672/", "bracket is unbalanced"),
    ("notaurl", "has no scheme"),
    (f"{PIECES[0]}:{PIECES[1]}@127.0.0.1:5672", "has no scheme"),
    (f"http://guest:{PIECES[0]}@127.0.0.1:5672/", "has scheme 'http'"),
]


@pytest.mark.parametrize(("uri", "words"), BAD_URIS, ids=range(len(BAD_URIS)))
def test_a_broker_uri_that_does_not_parse_is_a_check_error_that_quotes_none_of_it(uri, words):
    for where in ({"NAMEKO_CONFIG": {"AMQP_URI": uri}}, {"NAMEKO_CONFIG": {}, "AMQP_URI": uri}):
        with override_settings(**where):
            [error] = [m for m in check_errors() if m.id == "dbevents.E015"]
            assert words in error.msg and not leaks(error.msg + error.hint)
            assert "percent-encode" in error.msg or "expected one of" in error.msg
            assert "holds a password" in error.hint


@pytest.mark.parametrize("uri", [
    "amqp://guest:guest@127.0.0.1:5672/", "amqps://u:p%2Fw%23d@broker.example:5671/vhost",
    "pyamqp://guest:guest@localhost//", "memory://", "amqp://localhost",
])
def test_good_broker_uris_pass(uri):
    assert conf.uri_problem(uri) is None


def test_a_password_fragment_never_reaches_a_log_the_outbox_or_the_status(caplog):
    uri = f"amqp://guest:{PASSWORD}@127.0.0.1:5672/"
    with override_settings(NAMEKO_CONFIG={"AMQP_URI": uri}, DBEVENTS_PUBLISH_RETRIES=1):
        with capture_events(publish=True):
            Customer.objects.create(name="waits")
        assert publisher.wait(30)
        [row] = OutboxMessage.objects.filter(sent_at__isnull=True)
        assert "AMQP_URI cannot be parsed" in row.last_error and not leaks(row.last_error)
        text, json_out, err = io.StringIO(), io.StringIO(), io.StringIO()
        call_command("dbevents_status", "--database", connection.alias, stdout=text, stderr=err)
        call_command("dbevents_status", "--database", connection.alias, "--json", stdout=json_out, stderr=err)
        assert "AMQP_URI cannot be parsed" in text.getvalue() and "dbevents.E015" in err.getvalue()
        assert json.loads(json_out.getvalue())[0]["pending"] == 1
        with pytest.raises(CommandError) as refused:
            call_command("dbevents_relay", "--database", connection.alias, "--once", stdout=io.StringIO(),
                         stderr=err)
        assert "cannot publish: AMQP_URI cannot be parsed" in str(refused.value)
        everything = caplog.text + text.getvalue() + json_out.getvalue() + err.getvalue() + str(refused.value)
    assert not leaks(everything), everything


def test_redact_masks_the_configured_password_and_any_userinfo():
    uri = "amqp://svc:Sup3rS3cret@broker:5672/"
    with override_settings(NAMEKO_CONFIG={"AMQP_URI": uri}):
        assert conf.redact(f"cannot connect to {uri}: refused") == "cannot connect to ***: refused"
        assert conf.redact("auth failed for Sup3rS3cret") == "auth failed for ***"
        assert conf.redact("amqp://other:hunter22@elsewhere/ failed") == "amqp://other:***@elsewhere/ failed"


@pytest.mark.rabbitmq
def test_the_relay_and_status_run_despite_check_errors_that_do_not_concern_them(broker, capsys):
    from django.core.management import load_command_class

    def manage(*argv):   # as manage.py runs a command: system checks included, unless the command opts out
        name = argv[0]
        load_command_class("dbevents", name).run_from_argv(["manage.py", *argv])
        return capsys.readouterr()

    from tests.test_outbox import broker_down

    with broker_down(), capture_events(publish=True) as events:
        Customer.objects.create(name="left for the relay")
        assert publisher.wait(30)
    OutboxMessage.objects.update(available_at=None)
    broken = [{"model": "shop.Customer"}, {"model": "shop.Nope"}, {"model": "shop.Order", "serializer": "no.Such"}]
    with override_settings(MODELS_CRUD_EVENT=broken):
        status = manage("dbevents_status", "--database", connection.alias)
        assert f"{connection.alias}: pending 1" in status.out
        assert "configuration error: MODELS_CRUD_EVENT[1] names model 'shop.Nope'" in status.err
        relayed = manage("dbevents_relay", "--database", connection.alias, "--once")
    assert "published 1 event(s), 0 returned unroutable, 0 failed event publish attempt(s)" in relayed.out
    warnings = relayed.err
    assert "warning: MODELS_CRUD_EVENT[1] names model 'shop.Nope'" in warnings and "dbevents.E002" in warnings
    assert "dbevents.E003" in warnings
    assert [r.headers["dbevents.event_id"] for r in broker.drain()] == [events[0].id]


def test_the_relay_refuses_a_broken_uri_even_with_no_model_registered():
    uri = f"amqp://guest:{PASSWORD}@127.0.0.1:5672/"
    with override_settings(MODELS_CRUD_EVENT=[], NAMEKO_CONFIG={"AMQP_URI": uri}):
        with pytest.raises(CommandError) as refused:
            call_command("dbevents_relay", "--database", connection.alias, "--once", stdout=io.StringIO(),
                         stderr=io.StringIO())
    assert "cannot publish: AMQP_URI cannot be parsed" in str(refused.value) and not leaks(str(refused.value))
