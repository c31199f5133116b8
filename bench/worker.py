"""One benchmark worker: one library on one database, in one process, one run.

``BENCH_LIB=dbevents``: each workload through the stock engine (alias ``default``) and through
the dbevents engine (alias ``events``) on the same database, alternating, over several rounds.
``BENCH_LIB=des``: each workload with django-events-sourcing 0.8 enabled and inside its
``disable_dispatcher()``, on the stock engine. Events are counted by a consumer process at
RabbitMQ; a run where an event is missing, extra or duplicated is a failure, not a time.

Writes a JSON document to ``--out`` (``bench/run.py`` renders the tables).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
SIZES = {
    "reads": 500 if QUICK else 2000,
    "read_pool": 200 if QUICK else 1000,
    "creates": 100 if QUICK else 300,
    "saves": 200 if QUICK else 1000,
    "bulk": 2000 if QUICK else 10_000,
    "bulk_update_batch": 500,
    "cascade_parents": 5 if QUICK else 10,
    "cascade_children": 40 if QUICK else 100,
    "relay_rows": 20_000 if QUICK else 200_000,
    "memory_rows": tuple(int(n) for n in os.environ.get("BENCH_MEMORY_ROWS", "").replace(",", " ").split())
    or ((20_000, 200_000) if QUICK else (100_000, 1_000_000)),
}


@dataclass
class Variant:
    """One side of a comparison: an alias and a context the operation runs in."""

    name: str
    alias: str
    context: Callable[[], AbstractContextManager[Any]]
    emits: bool                      # whether this side is expected to publish


@dataclass
class Workload:
    """``setup(alias)`` returns the state ``run(alias, state)`` needs; ``expected`` maps event
    names to counts for a side that publishes everything it writes."""

    key: str
    title: str
    ops: int                          # operations (or rows) the timing is divided by
    unit: str                         # "op" or "row"
    setup: Callable[[str], Any]
    run: Callable[[str, Any], None]
    expected: dict[str, int]
    signal_based: bool                # django-events-sourcing sees it (post_save/post_delete)
    repeat: int = 1                   # measurements per round (cheap, noisy workloads)
    interleave: int = 0               # >0: the two sides alternate in this many slices of one measurement
    bulk: bool = False                # 10,000-row workloads: BENCH_BULK_ROUNDS rounds
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class ErrorCounter(logging.Handler):
    """Counts ERROR records of the library's logger: lost events are logged there."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = record.getMessage()[:300]


@dataclass
class Suite:
    """What a worker (or the profiler) runs: the workloads and the two sides."""

    lib: str
    db: str
    errors: ErrorCounter
    variants: list[Variant] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    settle: Callable[[float], Any] = lambda timeout: None
    clean: Callable[[], None] = lambda: None
    seed_children: Callable[[int, int], Any] = lambda parents, per_parent: None
    drop: Callable[[], None] = lambda: None


def build() -> Suite:
    """Set Django up and return the suite: workloads, the two sides, and helpers."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections, transaction
    from django.db.models import F

    from bench.benchapp.models import Child, Item, Parent

    lib = settings.LIB
    suite = Suite(lib=lib, db=settings.DB, errors=ErrorCounter())
    logging.getLogger("dbevents" if lib == "dbevents" else "django_events_sourcing").addHandler(suite.errors)

    create_tables(connections["default"], [Item, Parent, Child])
    if lib == "dbevents":
        migrate_dbevents("events")
        forget_outbox(connections["default"], "dbevents_bench%")  # what earlier runs left
        from dbevents import publisher

        suite.variants = [
            Variant("stock", "default", nullcontext, emits=False),
            Variant("dbevents", "events", nullcontext, emits=True),
        ]
        suite.settle = lambda timeout: publisher.wait(timeout)
    else:
        from django_events_sourcing.testing import disable_dispatcher

        suite.variants = [
            Variant("disabled", "default", disable_dispatcher, emits=False),
            Variant("enabled", "default", nullcontext, emits=True),
        ]
    def drop() -> None:
        drop_tables(connections["default"], [Child, Parent, Item])
        if lib == "dbevents":
            forget_outbox(connections["default"], settings.SERVICE_NAME)

    suite.drop = drop

    from django.utils import timezone

    now = timezone.now()

    def clean() -> None:
        truncate(connections["default"], ["benchapp_child", "benchapp_parent", "benchapp_item"])

    def seed_items(n: int) -> list[int]:
        objs = [Item(name=f"item {i}", quantity=i, price=Decimal("9.99"), updated_at=now) for i in range(n)]
        Item.objects.using("default").bulk_create(objs, batch_size=2000)
        return list(Item.objects.using("default").order_by("pk").values_list("pk", flat=True))

    def seed_children(parents: int, per_parent: int) -> list[int]:
        Parent.objects.using("default").bulk_create([Parent(name=f"parent {i}") for i in range(parents)])
        pids = list(Parent.objects.using("default").order_by("pk").values_list("pk", flat=True))
        objs = [
            Child(parent_id=pid, name=f"child {pid}/{i}", value=i, price=Decimal("1.25"), updated_at=now)
            for pid in pids for i in range(per_parent)
        ]
        Child.objects.using("default").bulk_create(objs, batch_size=2000)
        return pids

    suite.clean, suite.seed_children = clean, seed_children
    # ---------------------------------------------------------------- workloads

    def setup_reads(alias: str) -> Any:
        clean()
        pks = seed_items(SIZES["read_pool"])
        return [pks[i % len(pks)] for i in range(SIZES["reads"])]

    def run_reads(alias: str, pks: Any) -> None:
        manager = Item.objects.using(alias)
        for pk in pks:
            manager.get(pk=pk)

    def setup_creates(alias: str) -> Any:
        clean()
        return None

    def run_creates(alias: str, _: Any) -> None:
        manager = Item.objects.using(alias)
        for i in range(SIZES["creates"]):
            manager.create(name=f"new {i}", quantity=i, price=Decimal("4.20"), updated_at=now)

    def setup_saves(alias: str) -> Any:
        clean()
        seed_items(SIZES["saves"])
        return list(Item.objects.using(alias).order_by("pk"))

    def run_saves(alias: str, objs: Any) -> None:
        with transaction.atomic(using=alias):
            for obj in objs:
                obj.quantity += 1
                obj.save()

    def setup_bulk_rows(alias: str) -> Any:
        clean()
        seed_children(1, SIZES["bulk"])
        return None

    def run_update(alias: str, _: Any) -> None:
        Child.objects.using(alias).update(value=F("value") + 1)

    def run_update_filtered(alias: str, _: Any) -> None:
        # A WHERE that is no primary-key filter: MariaDB (no UPDATE ... RETURNING) locks the keys first.
        Child.objects.using(alias).filter(value__gte=0).update(value=F("value") + 1)

    def setup_bulk_create(alias: str) -> Any:
        clean()
        pid = Parent.objects.using("default").create(name="bulk").pk
        return [
            Child(parent_id=pid, name=f"bulk {i}", value=i, price=Decimal("2.50"), updated_at=now)
            for i in range(SIZES["bulk"])
        ]

    def run_bulk_create(alias: str, objs: Any) -> None:
        Child.objects.using(alias).bulk_create(objs)

    def setup_bulk_update(alias: str) -> Any:
        clean()
        seed_children(1, SIZES["bulk"])
        objs = list(Child.objects.using(alias).order_by("pk"))
        for obj in objs:
            obj.value += 1
            obj.price = Decimal("3.75")
        return objs

    def run_bulk_update(alias: str, objs: Any) -> None:
        Child.objects.using(alias).bulk_update(objs, ["value", "price"], batch_size=SIZES["bulk_update_batch"])

    def setup_cascade(alias: str) -> Any:
        clean()
        return seed_children(SIZES["cascade_parents"], SIZES["cascade_children"])

    def run_cascade(alias: str, pids: Any) -> None:
        Parent.objects.using(alias).filter(pk__in=pids).delete()

    n_bulk, n_par, n_ch = SIZES["bulk"], SIZES["cascade_parents"], SIZES["cascade_children"]
    suite.workloads = [
        Workload("reads", f"`get()` by pk ×{SIZES['reads']:,}", SIZES["reads"], "op",
                 setup_reads, run_reads, {}, True, repeat=5, interleave=40),
        Workload("creates", f"autocommit `create()` ×{SIZES['creates']:,}", SIZES["creates"], "op",
                 setup_creates, run_creates, {"item__created": SIZES["creates"]}, True),
        Workload("saves", f"`save()` ×{SIZES['saves']:,} in one `atomic()`", SIZES["saves"], "op",
                 setup_saves, run_saves, {"item__updated": SIZES["saves"]}, True),
        Workload("update", f"`QuerySet.update()` of {n_bulk:,} rows", n_bulk, "row",
                 setup_bulk_rows, run_update, {"child__updated": n_bulk}, False, bulk=True),
        Workload("update_filtered", f"`filter(value__gte=0).update()` of {n_bulk:,} rows", n_bulk, "row",
                 setup_bulk_rows, run_update_filtered, {"child__updated": n_bulk}, False, bulk=True),
        Workload("bulk_create", f"`bulk_create` of {n_bulk:,}", n_bulk, "row",
                 setup_bulk_create, run_bulk_create, {"child__created": n_bulk}, False, bulk=True),
        Workload("bulk_update", f"`bulk_update` of {n_bulk:,} (batch_size={SIZES['bulk_update_batch']:,})",
                 n_bulk, "row", setup_bulk_update, run_bulk_update, {"child__updated": n_bulk}, False, bulk=True),
        Workload("cascade", f"cascade delete: {n_par} parents × {n_ch} children", n_par * (1 + n_ch), "row",
                 setup_cascade, run_cascade, {"parent__deleted": n_par, "child__deleted": n_par * n_ch}, True),
    ]
    only = [w for w in os.environ.get("BENCH_WORKLOADS", "").replace(",", " ").split() if w]
    if only:
        suite.workloads = [w for w in suite.workloads if w.key in only]

    return suite


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "5")))
    parser.add_argument("--bulk-rounds", type=int, default=int(os.environ.get("BENCH_BULK_ROUNDS", "3")))
    parser.add_argument("--memory", action="store_true", help="also the 100,000-row update memory test")
    args = parser.parse_args()
    suite = build()
    from django.conf import settings
    from django.db import connections

    from bench.consumer import Consumer

    lib, db = suite.lib, suite.db
    consumer = Consumer(settings.AMQP_URI, settings.SERVICE_NAME, auto_delete_exchange=(lib == "des"))
    results: dict[str, Any] = {
        "lib": lib, "db": db, "rounds": args.rounds, "bulk_rounds": args.bulk_rounds, "quick": QUICK,
        "sizes": SIZES, "versions": versions(connections["default"], lib), "workloads": [],
    }
    try:
        # One untimed pass of the small workloads on both sides: connections, imports, caches
        # (the bulk paths' first-call costs are small next to their 10,000 rows).
        for w in suite.workloads:
            if not w.bulk:
                for v in suite.variants:
                    measure(suite, w, v, consumer, keep=False)
        for r in range(max(args.rounds, args.bulk_rounds)):
            for w in suite.workloads:
                if r >= (args.bulk_rounds if w.bulk else args.rounds):
                    continue
                for i in range(w.repeat):
                    if w.interleave:
                        measure_interleaved(suite, w, consumer)
                        continue
                    order = suite.variants if (r + i) % 2 == 0 else suite.variants[::-1]
                    for v in order:
                        measure(suite, w, v, consumer, keep=True)
            print(f"  [{lib}/{db}] round {r + 1} done", file=sys.stderr, flush=True)
        for w in suite.workloads:
            results["workloads"].append(summarise(w, suite.variants))
        if lib == "dbevents":
            results["relay"] = relay_drain(consumer, suite.clean, suite.seed_children)
        if args.memory and lib == "dbevents":
            results["memory"] = memory_test(consumer, suite.clean, suite.seed_children)
    finally:
        consumer.stop()
        suite.drop()
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1, default=str)


def measure(suite: Suite, w: Workload, v: Variant, consumer: Any, keep: bool) -> None:
    """Set up, time ``w`` on side ``v``, then wait for its events at the consumer."""
    settle, errors = suite.settle, suite.errors
    with suite.variants[0].context():  # seeding never publishes
        state = w.setup(v.alias)
    expected = w.expected if v.emits and (v.name != "enabled" or w.signal_based) else {}
    total = sum(expected.values())
    consumer.reset()
    errors_before = errors.count
    gc.collect()
    with v.context():
        t0 = time.monotonic()
        w.run(v.alias, state)
        t1 = time.monotonic()
    if total:
        snap = consumer.wait_for(total, timeout=30 + total / 500)
    else:
        settle(10)
        snap = consumer.snapshot()
    settle(30)
    problems = []
    if snap["count"] != total or snap["keys"] != expected:
        problems.append(f"expected {expected or 'no events'}, the consumer counted {snap['keys'] or 'none'}")
    if snap["dups"]:
        problems.append(f"{snap['dups']} duplicate event ids")
    if errors.count > errors_before:
        problems.append(f"{errors.count - errors_before} ERROR log(s), first: {errors.first}")
    sample = {
        "seconds": t1 - t0,
        "e2e": (snap["last"] - t0) if total and snap["last"] else None,
        "delivered": snap["count"],
        "expected": total,
        "without_id": snap["without_id"],
        "problems": problems,
    }
    if problems:
        print(f"  [{v.name}] {w.key}: FAILED: {'; '.join(problems)}", file=sys.stderr, flush=True)
    if keep:
        w.samples.setdefault(v.name, []).append(sample)


def measure_interleaved(suite: Suite, w: Workload, consumer: Any) -> None:
    """For a workload that publishes nothing (reads): one set-up, then the two sides alternate
    over ``w.interleave`` slices of the operations, so that load drifting on the machine weighs
    on both alike."""
    with suite.variants[0].context():
        ops = w.setup(suite.variants[0].alias)
    size = max(1, len(ops) // w.interleave)
    slices = [ops[i:i + size] for i in range(0, len(ops), size)]
    seconds = dict.fromkeys((v.name for v in suite.variants), 0.0)
    consumer.reset()
    gc.collect()
    for i, part in enumerate(slices):
        for v in suite.variants if i % 2 == 0 else suite.variants[::-1]:
            with v.context():
                t0 = time.monotonic()
                w.run(v.alias, part)
                seconds[v.name] += time.monotonic() - t0
    suite.settle(10)
    snap = consumer.snapshot()
    problems = [f"expected no events, the consumer counted {snap['keys']}"] if snap["count"] else []
    for v in suite.variants:
        w.samples.setdefault(v.name, []).append({
            "seconds": seconds[v.name], "e2e": None, "delivered": snap["count"], "expected": 0,
            "without_id": 0, "problems": problems,
        })


def summarise(w: Workload, variants: list[Variant]) -> dict[str, Any]:
    base, other = variants[0].name, variants[1].name
    bs, os_ = w.samples.get(base, []), w.samples.get(other, [])
    ratios = [o["seconds"] / b["seconds"] for b, o in zip(bs, os_, strict=True)]
    e2e = [o["e2e"] for o in os_ if o["e2e"]]
    failed = [p for s in bs + os_ for p in s["problems"]]
    return {
        "key": w.key, "title": w.title, "ops": w.ops, "unit": w.unit,
        "rows_written": sum(w.expected.values()),
        "signal_based": w.signal_based,
        "base": base, "other": other,
        "base_seconds": statistics.median(s["seconds"] for s in bs),
        "other_seconds": statistics.median(s["seconds"] for s in os_),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "e2e_seconds": statistics.median(e2e) if e2e else None,
        "delivered": [s["delivered"] for s in os_],
        "expected": os_[0]["expected"] if os_ else 0,
        "failed": failed,
    }


class _Refusing:
    """A transport for making a backlog: every message stays in the outbox for the relay."""

    def publish(self, messages: Any) -> Any:
        from dbevents.transport import PublishResult

        return PublishResult(failed=list(messages), error=ConnectionError("bench: making a backlog"))

    def close(self) -> None:
        pass


def relay_drain(consumer: Any, clean: Callable[[], None], seed_children: Callable[[int, int], Any]) -> dict[str, Any]:
    """``dbevents_relay --once`` (the Relay, in this process) draining a backlog of ``relay_rows``
    updated rows' events, from its start until the last event was counted at the consumer."""
    from django.db import connections
    from django.db.models import F
    from django.test import override_settings

    from bench.benchapp.models import Child
    from dbevents import publisher
    from dbevents.models import OutboxMessage
    from dbevents.relay import Relay

    rows = SIZES["relay_rows"]
    clean()
    seed_children(rows // 10_000 or 1, min(rows, 10_000))
    with override_settings(DBEVENTS_TRANSPORT="bench.worker._Refusing", DBEVENTS_PUBLISH_RETRIES=1):
        for low in range(0, rows, 10_000):  # statements of 10,000 rows: the backlog of many requests
            ids = Child.objects.using("default").order_by("pk").values_list("pk", flat=True)[low:low + 10_000]
            Child.objects.using("events").filter(pk__in=list(ids)).update(value=F("value") + 1)
        publisher.wait(600)
    backlog = OutboxMessage.objects.using("events").filter(sent_at__isnull=True)
    backlog.update(available_at=None, lease_owner=None, attempts=0)
    waiting = backlog.count()
    if connections["events"].vendor == "postgresql":
        with connections["events"].cursor() as cursor:
            # What autovacuum's ANALYZE does after a burst on a production server (this machine's
            # runs none): statistics of a nearly empty outbox make the claim's plan scan every
            # earlier unsent row per row.
            cursor.execute("ANALYZE dbevents_outbox")
    consumer.reset()
    t0 = time.monotonic()
    Relay(["events"]).run(once=True)
    t1 = time.monotonic()
    snap = consumer.wait_for(waiting, timeout=max(120.0, waiting / 2000))
    last = snap["last"] or t1
    out = {"rows": rows, "backlog": waiting, "delivered": snap["count"], "relay_seconds": t1 - t0,
           "e2e": last - t0 if snap["last"] else None}
    print(f"  relay drain: {out}", file=sys.stderr, flush=True)
    clean()
    return out


def memory_test(consumer: Any, clean: Callable[[], None], seed_children: Callable[[int, int], Any]) -> dict[str, Any]:
    """``QuerySet.update()`` of each of ``memory_rows`` rows in a fresh subprocess per engine:
    peak RSS growth over the process's RSS just before the statement, and delivery at the
    consumer. The rows are seeded by doubling (INSERT ... SELECT), not from Python objects."""
    from django.db import connections

    from bench.benchapp.models import Child

    runs = []
    for rows in SIZES["memory_rows"]:
        out: dict[str, Any] = {"rows": rows}
        for alias in ("default", "events"):
            clean()
            start, doublings = rows, 0
            while start % 2 == 0 and start > 20_000:
                start, doublings = start // 2, doublings + 1
            seed_children(1, start)
            table, qn = Child._meta.db_table, connections["default"].ops.quote_name
            cols = ", ".join(qn(c) for c in ("parent_id", "name", "value", "price", "updated_at"))
            with connections["default"].cursor() as cursor:
                for _ in range(doublings):
                    cursor.execute(f"INSERT INTO {qn(table)} ({cols}) SELECT {cols} FROM {qn(table)}")
            consumer.reset()
            proc = subprocess.run(
                [sys.executable, "-m", "bench.memory", alias], capture_output=True, text=True, env=os.environ.copy(),
            )
            if proc.returncode != 0:
                out[alias] = {"error": proc.stderr[-2000:]}
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            expected = rows + 1 if alias == "events" else 0   # the warm-up statement's event too
            snap = (consumer.wait_for(expected, timeout=max(120.0, rows / 2000)) if expected
                    else consumer.snapshot())
            res["delivered"] = snap["count"] - (1 if alias == "events" and snap["count"] else 0)
            res["complete"] = snap["count"] == expected
            res["e2e"] = (snap["last"] - res["t0"]) if expected and snap["last"] else None
            out[alias] = res
            print(f"  memory [{alias}, {rows:,} rows]: {res}", file=sys.stderr, flush=True)
        runs.append(out)
    clean()
    return {"runs": runs}


# -------------------------------------------------------------------- schema and data helpers

def create_tables(connection: Any, models: list[Any]) -> None:
    drop_tables(connection, models[::-1])
    with connection.schema_editor() as editor:
        for model in models:
            editor.create_model(model)


def drop_tables(connection: Any, models: list[Any]) -> None:
    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in models:
            if model._meta.db_table in existing:
                editor.delete_model(model)


def truncate(connection: Any, tables: list[str]) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
        elif connection.vendor == "mysql":
            cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
            for table in tables:
                cursor.execute(f"TRUNCATE {table}")
            cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")


def forget_outbox(connection: Any, service_pattern: str) -> None:
    """Delete the bench's own sent rows from the outbox (they are kept for
    DBEVENTS_OUTBOX_RETENTION; hundreds of thousands a run would weigh on later runs)."""
    if "dbevents_outbox" not in connection.introspection.table_names():
        return
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM dbevents_outbox WHERE service_name LIKE %s AND sent_at IS NOT NULL", [service_pattern])
        if connection.vendor == "postgresql":
            # A queue table: every event is an INSERT and an UPDATE. The dead rows earlier runs
            # left weigh on every outbox query until a VACUUM (the bench machine's server runs
            # no autovacuum; a production one does, see docs/delivery.md).
            cursor.execute("VACUUM ANALYZE dbevents_outbox")


def migrate_dbevents(alias: str) -> None:
    """The outbox table, when this version of dbevents has one (``DBEVENTS_DELIVERY``)."""
    import importlib.util

    if importlib.util.find_spec("dbevents.migrations") is None:
        return
    from django.core.management import call_command

    call_command("migrate", "dbevents", database=alias, verbosity=0)


def versions(connection: Any, lib: str) -> dict[str, str]:
    import django
    import kombu
    import rest_framework

    out = {
        "python": platform.python_version(),
        "django": django.get_version(),
        "djangorestframework": rest_framework.VERSION,
        "kombu": kombu.__version__,
    }
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            import sqlite3

            out["database"] = f"SQLite {sqlite3.sqlite_version}"
        else:
            cursor.execute("SELECT VERSION()")
            text = cursor.fetchone()[0]
            out["database"] = f"PostgreSQL {text.split()[1]}" if connection.vendor == "postgresql" else (
                f"MariaDB {text.split('-')[0]}" if "mariadb" in text.lower() else f"MySQL {text}")
    if lib == "dbevents":
        import nameko

        from dbevents import conf

        out["nameko"] = getattr(nameko, "__version__", "") or dist_version("nameko")
        out["dbevents"] = dist_version("django-dbevents")
        if "DBEVENTS_DELIVERY" in conf.DEFAULTS:
            default = conf.DEFAULTS["DBEVENTS_DELIVERY"]
            value = conf.get("DBEVENTS_DELIVERY")
            out["delivery"] = f"{value}" + (" (the default)" if not os.environ.get("BENCH_DELIVERY") else "")
            out["delivery_default"] = default
        else:
            out["delivery"] = "direct (this dbevents has no DBEVENTS_DELIVERY setting)"
    else:
        out["django-events-sourcing"] = dist_version("django-events-sourcing")
    return out


def dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
