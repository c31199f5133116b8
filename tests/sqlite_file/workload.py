"""``python -m tests.sqlite_file.workload DB_PATH JOURNAL_MODE ENGINE``: runs the workloads that
used to meet "database is locked" and prints a JSON report: per workload, the failures, and the
events published (counted by a transport that confirms everything)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Sequence

import django
from django.conf import settings

from dbevents.transport import Message, PublishResult

published = 0
_lock = threading.Lock()


class CountingTransport:
    """Every message confirmed, after a short delay (a broker round trip), and counted."""

    def publish(self, messages: Sequence[Message]) -> PublishResult:
        global published
        time.sleep(0.002)
        with _lock:
            published += len(messages)
        return PublishResult(confirmed=list(messages))

    def close(self) -> None:
        pass


def configure(path: str, journal_mode: str, engine: str) -> None:
    settings.configure(
        SECRET_KEY="x", USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "rest_framework", "dbevents", "tests.shop"],
        DATABASES={"default": {
            "ENGINE": engine, "NAME": path,
            "OPTIONS": {"init_command": f"PRAGMA journal_mode={journal_mode}", "timeout": 5},
        }},
        MODELS_CRUD_EVENT=[{"model": "shop.Customer"}],
        DBEVENTS_TRANSPORT="tests.sqlite_file.workload.CountingTransport",
        DBEVENTS_DELIVERY="outbox",
        NAMEKO_CONFIG={"AMQP_URI": "memory://"},
        SERVICE_NAME="shop",
    )
    django.setup()


def main() -> None:
    path, journal_mode, engine = sys.argv[1:4]
    configure(path, journal_mode, engine)
    from django.core.management import call_command
    from django.db import transaction

    from tests.shop.models import Customer

    call_command("migrate", run_syncdb=True, verbosity=0)
    report: dict[str, int] = {}

    def attempt(name: str, work: object) -> None:
        try:
            work()  # type: ignore[operator]
        except Exception as exc:  # counted: the report is the point
            report[name] = report.get(name, 0) + 1
            report.setdefault(f"{name} error", str(exc))  # type: ignore[arg-type]

    def read_then_write() -> None:
        with transaction.atomic():
            list(Customer.objects.all()[:5])
            time.sleep(0.005)  # the publisher thread marks outbox rows meanwhile
            Customer.objects.create(name="rw")

    async def async_writes() -> None:
        c = await Customer.objects.acreate(name="a")
        c.name = "b"
        await c.asave()
        await Customer.objects.abulk_create([Customer(name="c"), Customer(name="d")])

    def save_while_iterating() -> None:
        for c in Customer.objects.filter(name="rw")[:5].iterator(chunk_size=2):
            c.name = "rw2"
            c.save()

    for _ in range(20):
        report.setdefault("read-then-write", 0)
        attempt("read-then-write", read_then_write)
    for _ in range(10):
        report.setdefault("async", 0)
        attempt("async", lambda: asyncio.run(async_writes()))
        report.setdefault("save-while-iterating", 0)
        attempt("save-while-iterating", save_while_iterating)
    from dbevents import publisher

    publisher.wait(30)
    # The transport is this file imported under its module name, not __main__.
    from tests.sqlite_file import workload

    report["published"] = workload.published
    report["rows"] = Customer.objects.count()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
