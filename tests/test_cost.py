"""What capture costs in queries: nothing for reads, nothing that assertNumQueries sees, and a
number of its own queries that does not grow with the number of rows."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from dbevents.capture.rows import Rows
from dbevents.testing import capture_events
from tests.shop.models import Customer, Item, Order, Product

pytestmark = pytest.mark.django_db(transaction=True)
MARIADB = connection.vendor == "mysql"


@pytest.fixture
def own_queries(monkeypatch):
    """Counts the queries dbevents itself runs (on its bare driver cursors)."""
    calls = []
    original = Rows.query

    def counting(self, sql, params):
        calls.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(Rows, "query", counting)
    return calls


def test_reads_cost_no_query(own_queries):
    c = Customer.objects.create(name="a")
    own_queries.clear()
    with CaptureQueriesContext(connection) as ctx:
        list(Customer.objects.filter(pk=c.pk))
        Customer.objects.get(pk=c.pk)
        Customer.objects.count()
    assert len(ctx.captured_queries) == 3
    assert own_queries == []


def test_user_query_counts_are_unchanged():
    """The queries Django logs (what assertNumQueries counts) are the same with capture on
    and off; only the SQL text differs where RETURNING was added."""
    from django.test import override_settings

    def workload(tag):
        c = Customer.objects.create(name=tag)
        Customer.objects.filter(pk=c.pk).update(name="c")
        Customer.objects.filter(name="c").update(name="d")
        Product.objects.bulk_create([Product(sku=f"{tag}{i}", name="p") for i in range(3)])
        with transaction.atomic():
            c.name = "e"
            c.save()
        c.delete()

    def kinds(enabled, tag):
        with override_settings(DBEVENTS_ENABLED=enabled), CaptureQueriesContext(connection) as ctx:
            workload(tag)
        return [q["sql"].split()[0].upper() for q in ctx.captured_queries]

    with capture_events() as events:
        on = kinds(True, "on")
    off = kinds(False, "off")
    assert on == off
    assert len(events) == 8


@pytest.mark.parametrize("n", [3, 30])
def test_n_saves_in_one_transaction(own_queries, n):
    customers = [Customer.objects.create(name=str(i)) for i in range(n)]
    own_queries.clear()
    with capture_events() as events, transaction.atomic():
        for c in customers:
            c.name += "!"
            c.save()
    assert len(events) == n
    # RETURNING gives the rows with the statements. MariaDB has no UPDATE ... RETURNING: one
    # query loads all N rows at COMMIT.
    assert len(own_queries) == (1 if MARIADB else 0)


@pytest.mark.parametrize("n", [5, 50])
def test_filtered_update(own_queries, n):
    Product.objects.bulk_create([Product(sku=f"s{i}", name="x") for i in range(n)])
    own_queries.clear()
    with capture_events() as events:
        Product.objects.filter(name="x").update(stock=1)
    assert len(events) == n
    # MariaDB: SELECT ... FOR UPDATE for the keys, then one load of the rows.
    assert len(own_queries) == (2 if MARIADB else 0)


@pytest.mark.parametrize("n", [10, 100])
def test_bulk_create(own_queries, n):
    with capture_events() as events:
        Product.objects.bulk_create([Product(sku=f"s{i}", name="x") for i in range(n)])
    assert len(events) == n
    assert own_queries == []


@pytest.mark.parametrize("n", [2, 20])
def test_cascade_delete(own_queries, n):
    c = Customer.objects.create(name="c")
    for i in range(n):
        Item.objects.create(order=Order.objects.create(customer=c, number=i), sku="s")
    own_queries.clear()
    with capture_events() as events:
        c.delete()
    assert len(events) == 2 * n + 1
    assert own_queries == []


def test_marking_rows_sent_is_one_transaction_of_one_statement_per_thousand_rows(monkeypatch):
    """The publisher's mark after a confirm: one UPDATE per 1,000 rows, one COMMIT, and on
    PostgreSQL without waiting for the disk (a lost mark only means a duplicate)."""
    from dbevents import outbox, publisher
    from dbevents.models import OutboxMessage
    from tests.test_outbox import broker_down

    with broker_down():
        Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(1500)])
        assert publisher.wait(30)
    from dbevents.events import Message

    messages = [Message("s", "r", b"", "", "", {}, pk, connection.alias)
                for pk in OutboxMessage.objects.values_list("id", flat=True)]
    seen = []

    def record(execute, sql, params, many, context):
        seen.append(sql.split()[0].upper() + (" " + sql.split()[1].upper() if sql.startswith("SET") else ""))
        return execute(sql, params, many, context)

    from django.db import connections

    commits = []
    real = connections[connection.alias]
    original_commit = real.commit
    monkeypatch.setattr(real, "commit", lambda: (commits.append(1), original_commit())[1])
    with connection.execute_wrapper(record):
        outbox.mark_published(messages, [])
    assert len(commits) == 1
    expected_set = ["SET LOCAL"] if connection.vendor == "postgresql" else []
    assert [s for s in seen if s not in ("BEGIN", "SAVEPOINT", "RELEASE")] == [*expected_set, "UPDATE", "UPDATE"]
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


# Round trips a write costs on top of the stock engine's (the marking after publishing happens on
# the publisher's own connection). An autocommit write gets a transaction of its own: PostgreSQL
# sends BEGIN with the statement and adds one round trip for the outbox INSERT with its savepoint
# and the COMMIT (with psycopg's server-side binding, BEGIN is one more); MariaDB
# adds START TRANSACTION, the outbox INSERT and the COMMIT, and for an UPDATE (no RETURNING) the
# SELECT ... FOR UPDATE of its keys and one load of the rows. In one atomic() PostgreSQL adds
# nothing (the outbox INSERT goes with the COMMIT), MariaDB the load and the outbox INSERT.
EXTRA_ROUND_TRIPS = {
    "postgresql": {"create": 1, "update": 1, "saves": 0},
    "mysql": {"create": 3, "update": 5, "saves": 2},
}


@pytest.fixture
def round_trips():
    """``round_trips(engine, work)``: how many round trips ``work`` makes with this thread's
    ``default`` connection through the project's TCP proxy, on the dbevents or the stock engine."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.utils.module_loading import import_string

    from tests.faultproxy import FaultProxy

    if connection.vendor == "sqlite":
        pytest.skip("SQLite: an embedded database makes no round trips")
    settings = connection.settings_dict
    stock = import_string(f"django.db.backends.{connection.vendor}.base.DatabaseWrapper")
    original = connections[DEFAULT_DB_ALIAS]
    with FaultProxy(upstream=(settings["HOST"], int(settings["PORT"]))) as proxy:

        def count(engine, work):
            wrapper = type(original) if engine == "dbevents" else stock
            proxied = wrapper({**settings, "HOST": proxy.address[0], "PORT": proxy.address[1]}, DEFAULT_DB_ALIAS)
            connections[DEFAULT_DB_ALIAS] = proxied
            try:
                proxied.ensure_connection()
                before = proxy.round_trips
                work()
                return proxy.round_trips - before
            finally:
                connections[DEFAULT_DB_ALIAS] = original
                proxied.close()

        yield count


def _saves():
    customers = list(Customer.objects.order_by("pk")[:20])
    with transaction.atomic():
        for c in customers:
            c.name += "!"
            c.save()


WRITES = {
    "create": lambda: Customer.objects.create(name="new"),
    "update": lambda: Customer.objects.filter(name__startswith="c").update(email="x@example.com"),
    "saves": _saves,
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_round_trips_a_write_adds(round_trips, write):
    from dbevents import publisher

    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(20)])
    assert publisher.wait(30)
    stock = round_trips("stock", WRITES[write])
    ours = round_trips("dbevents", WRITES[write])
    assert publisher.wait(30)
    assert ours - stock == EXTRA_ROUND_TRIPS[connection.vendor][write], (stock, ours)
