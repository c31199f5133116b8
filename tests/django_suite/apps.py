"""Registers every concrete model of the suite's installed apps in ``MODELS_CRUD_EVENT`` and
counts what dbevents logs, for the gate's report (:mod:`tests.django_suite.report`)."""

from __future__ import annotations

import logging

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.signals import setting_changed

from tests.django_suite import report

_registered: dict[str, dict[str, str]] = {}


class LogCounter(logging.Handler):
    """Counts dbevents' WARNING and ERROR records by their message template."""

    def emit(self, record: logging.LogRecord) -> None:
        report.add("logs", f"{record.levelname} {record.msg}"[:200])


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
