"""Registers every concrete model of the suite's installed apps in ``MODELS_CRUD_EVENT`` and
counts what dbevents logs, for the gate's report (:mod:`tests.django_suite.report`)."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.signals import setting_changed

from tests.django_suite import report

_registered: dict[str, dict[str, str]] = {}


class LogCounter(logging.Handler):
    """Counts dbevents' WARNING and ERROR records by their message (and the exception's)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.getMessage()}"[:240]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" [{type(exc).__name__}: {str(exc)[:160]}]"
        report.add("logs", text)


class GateConfig(AppConfig):
    name = "tests.django_suite"
    label = "dbevents_suite"

    def ready(self) -> None:
        # Runs again whenever the test runner installs more apps: the list grows with them. A
        # test that narrows INSTALLED_APPS for a while leaves the full list in place.
        before = len(_registered)
        for model in apps.get_models(include_auto_created=True):
            # dbevents' own outbox is the one model that may not be registered (dbevents.E013).
            if not model._meta.proxy and model._meta.app_label != "dbevents":
                _registered.setdefault(model._meta.label, {"model": model._meta.label})
        if len(_registered) != before:
            settings.MODELS_CRUD_EVENT = list(_registered.values())
            setting_changed.send(sender=type(settings), setting="MODELS_CRUD_EVENT",
                                 value=settings.MODELS_CRUD_EVENT, enter=True)
        log = logging.getLogger("dbevents")
        if not any(isinstance(h, LogCounter) for h in log.handlers):
            log.addHandler(LogCounter(logging.WARNING))
            # Counted and reported by the gate, not printed among Django's test output.
            log.propagate = False
        report.set_value("registered", len(_registered))
        _build_events_at_testcase_teardown()
        _wait_for_the_publisher_before_each_test()


def _wait_for_the_publisher_before_each_test() -> None:
    """The publisher thread publishes a test's committed events while the next test runs. A
    test that counts the garbage collector's finds (``gc.garbage``, Django 6.1's
    ``test_release_memory_without_garbage_collection``) would count what that thread frees
    meanwhile (a retried ``database table is locked`` leaves its traceback's cycle), which is
    none of the engine's doing: each test starts once the previous one's events are out."""
    from django.test import SimpleTestCase

    from dbevents import publisher

    if getattr(SimpleTestCase, "_dbevents_waits", False):
        return
    call = SimpleTestCase.__call__

    def after_publishing(self: Any, result: Any = None) -> Any:
        publisher.wait(30)
        return call(self, result)

    SimpleTestCase.__call__ = after_publishing  # type: ignore[method-assign]
    SimpleTestCase._dbevents_waits = True  # type: ignore[attr-defined]


def _build_events_at_testcase_teardown() -> None:
    """A ``TestCase`` never commits, so its events would never be built: build them (as
    ``capture_events`` does) before its transaction is rolled back, and count them."""
    from django.db import connections
    from django.test import TestCase

    if getattr(TestCase, "_dbevents_gate", False):
        return
    rollback = TestCase._rollback_atomics.__func__  # type: ignore[attr-defined]

    def _rollback_atomics(cls: Any, atomics: Any) -> None:
        for alias in atomics:
            conn = connections[alias]
            capture = getattr(conn, "dbevents", None)
            if capture is None or not capture.pending.events or conn.needs_rollback:
                continue
            if capture.vendor.commit_guard and capture.vendor.transaction_failed():
                continue
            for event in capture.prepare(peek=True):
                report.add("built", event.model)
        rollback(cls, atomics)

    TestCase._rollback_atomics = classmethod(_rollback_atomics)  # type: ignore[assignment]
    TestCase._dbevents_gate = True  # type: ignore[attr-defined]
