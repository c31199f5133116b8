"""Differential tests: a statement run through the dbevents engine behaves exactly as on Django's
stock engine (alias ``stock``: the same database), and its events are the rows it changed.

Each case runs twice from the same table contents: once on the stock alias, once on the dbevents
alias inside ``capture_events()``. What the application can observe must be equal -- the
exception type, ``rowcount``, ``lastrowid``, ``description``, what ``fetchall()`` gives or
raises, what ``execute()`` returns, the SQL in ``connection.queries`` and the table afterwards.
Then the events must equal the row-level difference of the table before and after: ``created``
for new keys, ``deleted`` for vanished ones, ``updated`` for changed rows, with the row's values.
A case may instead declare that dbevents logs a WARNING naming the table.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

from dbevents.testing import capture_events

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "stock"])
VENDOR = connections["default"].vendor
MARIADB = VENDOR == "mysql"

# Table -> (model label, primary-key column, compared columns, initial rows).
TABLES: dict[str, tuple[str, str, tuple[str, ...], list[tuple[Any, ...]]]] = {
    "shop_counter": ("shop.Counter", "id", ("id", "value"), [(1, 10), (2, 20), (3, 30)]),
    "shop_product": ("shop.Product", "id", ("id", "sku", "name", "stock", "data"),
                     [(1, "a1", "apple", 1, "{}"), (2, "a2", "50%", 2, "{}"), (3, "b1", "it's", 3, "{}")]),
}


@dataclass
class Case:
    """One statement (or one ``executemany``) and where it applies."""

    id: str
    table: str
    sql: Any
    params: Any = None
    many: bool = False
    vendors: tuple[str, ...] = ("sqlite", "postgresql", "mysql")
    warns: bool = False              # dbevents logs a WARNING naming the table instead of events
    replaces: tuple[Any, ...] = ()   # keys a REPLACE deletes and inserts anew: deleted + created
    fetch: bool = True               # call fetchall() after the statement
    also: tuple[str, ...] = ()       # other tables the statement writes (data-modifying CTEs)
    marks: list[Any] = field(default_factory=list)


CASES = [
    # INSERT: parameters, literals, several rows, defaults.
    Case("insert-params", "shop_counter", "INSERT INTO shop_counter (id, value) VALUES (%s, %s)", [10, 1]),
    Case("insert-no-pk", "shop_counter", "INSERT INTO shop_counter (value) VALUES (%s)", [7]),
    Case("insert-literal-rows", "shop_counter", "INSERT INTO shop_counter (value) VALUES (5), (6)"),
    Case("insert-select", "shop_counter", "INSERT INTO shop_counter (value) SELECT value + 1 FROM shop_counter"),
    Case("insert-own-returning", "shop_counter", "INSERT INTO shop_counter (value) VALUES (%s) RETURNING value, id",
         [8], vendors=("sqlite", "postgresql", "mysql")),
    Case("insert-duplicate-pk", "shop_counter", "INSERT INTO shop_counter (id, value) VALUES (%s, %s)", [1, 1]),
    Case("insert-fk-violation", "shop_item",
         "INSERT INTO shop_item (order_id, sku, qty) VALUES (%s, %s, %s)", [999, "x", 1]),
    # UPDATE: filters of every kind, literals with %, quoting forms.
    Case("update-all", "shop_counter", "UPDATE shop_counter SET value = value + 1"),
    Case("update-pk-param", "shop_counter", "UPDATE shop_counter SET value = %s WHERE id = %s", [0, 2]),
    Case("update-no-match", "shop_counter", "UPDATE shop_counter SET value = %s WHERE id = %s", [0, 99]),
    Case("update-percent-literal-no-params", "shop_product", "UPDATE shop_product SET stock = 9 WHERE name LIKE 'a%'"),
    Case("update-percent-literal-params", "shop_product",
         "UPDATE shop_product SET stock = %s WHERE name LIKE '5%%'", [9]),
    Case("update-quote-in-literal", "shop_product", "UPDATE shop_product SET stock = 7 WHERE name = 'it''s'"),
    Case("update-quoted-table", "shop_counter", 'UPDATE "shop_counter" SET "value" = 1 WHERE "id" = 1',
         vendors=("sqlite", "postgresql")),
    Case("update-backquoted-table", "shop_counter", "UPDATE `shop_counter` SET `value` = 1 WHERE `id` = 1",
         vendors=("sqlite", "mysql")),
    Case("update-alias", "shop_counter", "UPDATE shop_counter c SET value = 2 WHERE c.id = %s", [1],
         vendors=("postgresql",)),
    Case("update-own-returning", "shop_counter", "UPDATE shop_counter SET value = 3 WHERE id <= %s RETURNING id",
         [2], vendors=("sqlite", "postgresql")),
    Case("update-trailing-semicolon-comment", "shop_counter",
         "UPDATE shop_counter SET value = 0 WHERE id = 1; -- reset"),
    Case("update-leading-comment", "shop_counter", "/* app */ UPDATE shop_counter SET value = 0 WHERE id = 1"),
    # DELETE.
    Case("delete-where", "shop_counter", "DELETE FROM shop_counter WHERE value > %s", [15]),
    Case("delete-all", "shop_counter", "DELETE FROM shop_counter"),
    Case("delete-all-comment", "shop_counter", "DELETE FROM shop_counter -- all of them"),
    Case("delete-all-block-comment", "shop_counter", "DELETE FROM shop_counter /* all */"),
    Case("update-key-zero", "shop_counter", "UPDATE shop_counter SET value = 1 WHERE id IN (%s, %s)", [0, 1]),
    Case("delete-own-returning", "shop_counter", "DELETE FROM shop_counter WHERE id = %s RETURNING value",
         [3], vendors=("sqlite", "postgresql", "mysql")),
    # Upserts.
    Case("upsert-on-conflict", "shop_counter",
         "INSERT INTO shop_counter (id, value) VALUES (1, 11), (9, 99) ON CONFLICT (id) DO UPDATE SET value = excluded.value",
         vendors=("sqlite", "postgresql")),
    Case("upsert-on-conflict-do-nothing", "shop_counter",
         "INSERT INTO shop_counter (id, value) VALUES (1, 11), (9, 99) ON CONFLICT DO NOTHING",
         vendors=("sqlite", "postgresql")),
    Case("upsert-on-duplicate-key", "shop_counter",
         "INSERT INTO shop_counter (id, value) VALUES (1, 11), (9, 99) ON DUPLICATE KEY UPDATE value = VALUES(value)",
         vendors=("mysql",)),
    Case("insert-ignore", "shop_counter", "INSERT IGNORE INTO shop_counter (id, value) VALUES (1, 11), (9, 99)",
         vendors=("mysql",)),
    Case("insert-or-ignore", "shop_counter", "INSERT OR IGNORE INTO shop_counter (id, value) VALUES (1, 11), (9, 99)",
         vendors=("sqlite",)),
    # PostgreSQL literals: dollar quotes (tagged or not) and escape strings hide ; ' RETURNING.
    Case("pg-dollar-quote", "shop_product", "UPDATE shop_product SET name = $$x; y$$ WHERE id = %s", [1],
         vendors=("postgresql",)),
    Case("pg-tagged-dollar-quote", "shop_product",
         "UPDATE shop_product SET name = $t$it's $$ RETURNING$t$ WHERE stock >= %s", [2], vendors=("postgresql",)),
    Case("pg-dollar-quote-own-returning", "shop_product",
         "UPDATE shop_product SET name = $$a;b$$ WHERE id = 1 RETURNING id, name", vendors=("postgresql",)),
    Case("pg-escape-string", "shop_product", "UPDATE shop_product SET name = E'it\\'s; x' WHERE id = 2",
         vendors=("postgresql",)),
    Case("pg-escape-string-delete", "shop_product", "DELETE FROM shop_product WHERE name = E'it\\'s'",
         vendors=("postgresql",)),
    Case("mysql-backslash-escape", "shop_product", "UPDATE shop_product SET stock = 5 WHERE name = 'it\\'s'",
         vendors=("mysql",)),
    Case("mysql-double-quoted-string", "shop_product", 'UPDATE shop_product SET stock = 5 WHERE name = "apple"',
         vendors=("mysql",)),
    # Upserts with an aliased target, and touching one key twice in one statement.
    Case("upsert-target-alias", "shop_counter",
         "INSERT INTO shop_counter AS c (id, value) VALUES (1, 5), (9, 9) "
         "ON CONFLICT (id) DO UPDATE SET value = c.value + excluded.value", vendors=("sqlite", "postgresql")),
    Case("upsert-same-key-twice", "shop_counter",
         "INSERT INTO shop_counter (id, value) VALUES (50, 5), (50, 6), (1, 7), (1, 8) "
         "ON CONFLICT (id) DO UPDATE SET value = excluded.value", vendors=("sqlite", "postgresql")),
    Case("upsert-same-key-twice-mysql", "shop_counter",
         "INSERT INTO shop_counter (id, value) VALUES (50, 5), (50, 6), (1, 7), (1, 8) "
         "ON DUPLICATE KEY UPDATE value = VALUES(value)", vendors=("mysql",)),
    Case("upsert-row-alias-mysql", "shop_counter",
         "INSERT INTO shop_counter (id, value) VALUES (1, 5), (9, 9) AS new ON DUPLICATE KEY UPDATE value = new.value",
         vendors=()),  # MySQL 8.0.19+ syntax; MariaDB has no row alias
    Case("insert-or-replace", "shop_counter", "INSERT OR REPLACE INTO shop_counter (id, value) VALUES (1, 5), (9, 9)",
         vendors=("sqlite",), replaces=(1,)),
    Case("replace-into", "shop_counter", "REPLACE INTO shop_counter (id, value) VALUES (1, 5), (9, 9)",
         vendors=("sqlite", "mysql"), replaces=(1,)),
    Case("replace-on-unique-key", "shop_product",
         "REPLACE INTO shop_product (id, sku, name, stock, data) VALUES (%s, %s, %s, %s, %s)",
         [7, "a2", "new", 0, "{}"], vendors=("sqlite", "mysql"), replaces=(2, 7)),
    Case("replace-select", "shop_counter",
         "REPLACE INTO shop_counter (id, value) SELECT id, stock * 100 FROM shop_product WHERE stock >= %s", [2],
         vendors=("sqlite", "mysql"), replaces=(2, 3)),
    Case("insert-or-replace-select", "shop_counter",
         "INSERT OR REPLACE INTO shop_counter (id, value) SELECT id + 1, stock FROM shop_product",
         vendors=("sqlite",), replaces=(2, 3)),
    Case("replace-select-on-unique-key", "shop_product",
         "REPLACE INTO shop_product (id, sku, name, stock, data) SELECT id + 10, sku, 'copy', 0, '{}' "
         "FROM shop_product WHERE name LIKE 'app%'", vendors=("sqlite", "mysql"), replaces=(1, 11)),
    # Statement types other than str.
    Case("bytes-statement", "shop_counter", b"UPDATE shop_counter SET value = 1 WHERE id = 1",
         vendors=("postgresql", "mysql")),  # Django's SQLite cursor takes str only
    Case("bytes-insert-params", "shop_counter", b"INSERT INTO shop_counter (id, value) VALUES (%s, %s)", [40, 4],
         vendors=("postgresql", "mysql")),
    # Named parameters (pyformat), psycopg's composed statements.
    Case("update-named-params", "shop_counter", "UPDATE shop_counter SET value = %(v)s WHERE id = %(id)s",
         {"v": 4, "id": 2}, vendors=("postgresql", "mysql")),
    Case("insert-named-params", "shop_counter", "INSERT INTO shop_counter (id, value) VALUES (%(id)s, %(v)s)",
         {"v": 4, "id": 20}),
    Case("psycopg-composed", "shop_counter", "composed", [3, 1], vendors=("postgresql",)),
    # Several statements in one execute(): PostgreSQL runs them; the others refuse.
    Case("several-statements", "shop_counter",
         "UPDATE shop_counter SET value = 1 WHERE id = 1; DELETE FROM shop_counter WHERE id = 2",
         warns=VENDOR != "sqlite"),  # MariaDB's client library runs them too
    Case("several-statements-second-writes", "shop_counter",
         "SELECT 1; DELETE FROM shop_counter WHERE id = 2", vendors=("postgresql",), warns=True),
    # A table of the same name in another schema / database is not the registered one.
    Case("other-schema-table", "shop_counter", "UPDATE dbevents_other.shop_counter SET value = 2",
         vendors=("postgresql", "mysql")),
    Case("other-schema-insert", "shop_counter", "INSERT INTO dbevents_other.shop_counter (id, value) VALUES (7, 7)",
         vendors=("postgresql", "mysql")),
    Case("default-schema-table", "shop_counter", "UPDATE public.shop_counter SET value = 2 WHERE id = 1",
         vendors=("postgresql",)),
    Case("sqlite-main-schema", "shop_counter", "UPDATE main.shop_counter SET value = 2 WHERE id = 1",
         vendors=("sqlite",)),
    # Joins in the write: PostgreSQL/SQLite UPDATE ... FROM, PostgreSQL DELETE ... USING.
    Case("update-from", "shop_counter",
         "UPDATE shop_counter SET value = p.stock FROM shop_product p WHERE p.id = shop_counter.id AND p.stock > 1",
         vendors=("sqlite", "postgresql")),
    Case("delete-using", "shop_counter",
         "DELETE FROM shop_counter c USING shop_product p WHERE p.id = c.id AND p.stock >= %s", [2],
         vendors=("postgresql",)),
    # Read-only CTEs before the write: the main statement is captured.
    Case("cte-read-then-delete", "shop_counter",
         "WITH p AS (SELECT id FROM shop_product WHERE stock >= %s) DELETE FROM shop_counter "
         "WHERE id IN (SELECT id FROM p) AND value > %s", [2, 0], vendors=("sqlite", "postgresql")),
    Case("cte-read-then-update", "shop_counter",
         "WITH p (x) AS (SELECT %s), q AS (SELECT 2) UPDATE shop_counter SET value = (SELECT x FROM p) WHERE id = %s",
         [77, 1], vendors=("sqlite", "postgresql")),
    Case("cte-read-then-insert", "shop_counter",
         "WITH p AS (SELECT 5 AS v) INSERT INTO shop_counter (value) SELECT v FROM p", vendors=("sqlite", "postgresql")),
    # Data-modifying CTEs (PostgreSQL): each CTE's write and the main statement.
    Case("cte-update", "shop_counter",
         "WITH t AS (UPDATE shop_counter SET value = 0 WHERE id = 1 RETURNING id) SELECT id FROM t",
         vendors=("postgresql",)),
    Case("cte-delete-into-insert", "shop_counter",
         "WITH d AS (DELETE FROM shop_counter WHERE value > %s RETURNING id, value) INSERT INTO shop_product "
         "(sku, name, stock, data) SELECT 'c' || id, 'moved', value, '{}' FROM d", [15],
         vendors=("postgresql",), also=("shop_product",)),
    Case("cte-insert-given-keys-then-update", "shop_counter",
         "WITH n AS (INSERT INTO shop_counter (id, value) VALUES (%s, %s) RETURNING id) "
         "UPDATE shop_product SET stock = 0 WHERE id = (SELECT id - 60 FROM n)", [62, 5],
         vendors=("postgresql",), also=("shop_product",)),
    Case("cte-upsert-given-keys", "shop_counter",
         "WITH n AS (INSERT INTO shop_counter (id, value) VALUES (1, 5), (9, 9) ON CONFLICT (id) "
         "DO UPDATE SET value = excluded.value RETURNING id) SELECT count(*) FROM n", vendors=("postgresql",)),
    Case("cte-two-writes", "shop_counter",
         "WITH a AS (UPDATE shop_counter SET value = value + %s WHERE id < %s RETURNING id), "
         "b AS (DELETE FROM shop_product WHERE stock = %s RETURNING id) "
         "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)", [1, 3, 3],
         vendors=("postgresql",), also=("shop_product",)),
    Case("cte-read-then-write-cte", "shop_counter",
         "WITH p AS (SELECT id FROM shop_product WHERE stock >= %s), u AS (UPDATE shop_counter SET value = -1 "
         "WHERE id IN (SELECT id FROM p) RETURNING *) SELECT id, value FROM u ORDER BY id", [2],
         vendors=("postgresql",)),
    Case("cte-percent-literal-no-params", "shop_product",
         "WITH u AS (UPDATE shop_product SET stock = 0 WHERE name LIKE '5%' RETURNING id) SELECT id FROM u",
         vendors=("postgresql",)),
    Case("cte-update-from", "shop_counter",
         "WITH u AS (UPDATE shop_counter c SET value = p.stock + %s FROM shop_product p WHERE p.id = c.id "
         "AND p.stock > %s RETURNING c.id) SELECT count(*) FROM u", [100, 1], vendors=("postgresql",)),
    Case("cte-delete-using", "shop_counter",
         "WITH d AS (DELETE FROM shop_counter c USING shop_product p WHERE p.id = c.id AND p.name = %s "
         "RETURNING c.id) SELECT count(*) FROM d", ["apple"], vendors=("postgresql",)),
    Case("cte-named-params", "shop_counter",
         "WITH u AS (UPDATE shop_counter SET value = %(v)s WHERE id = %(id)s RETURNING id) SELECT id FROM u",
         {"v": 3, "id": 2}, vendors=("postgresql",)),
    Case("cte-fails", "shop_counter",
         "WITH u AS (UPDATE shop_counter SET value = value / (id - 2) RETURNING id) SELECT id FROM u",
         vendors=("postgresql",)),
    # MERGE (PostgreSQL 15+): every action, conditions, sources, parameters.
    Case("merge-update", "shop_counter",
         "MERGE INTO shop_counter c USING shop_product p ON p.id = c.id WHEN MATCHED THEN UPDATE SET value = p.stock",
         vendors=("postgresql",)),
    Case("merge-delete-or-update", "shop_counter",
         "MERGE INTO shop_counter c USING shop_product p ON p.id = c.id WHEN MATCHED AND p.stock > %s THEN DELETE "
         "WHEN MATCHED THEN UPDATE SET value = c.value + %s", [2, 1], vendors=("postgresql",)),
    Case("merge-insert-given-keys", "shop_counter",
         "MERGE INTO shop_counter c USING (SELECT id + 10 AS id, stock FROM shop_product) p ON p.id = c.id "
         "WHEN NOT MATCHED AND p.stock > 1 THEN INSERT (id, value) VALUES (p.id, p.stock)", vendors=("postgresql",)),
    Case("merge-update-and-insert", "shop_counter",
         "MERGE INTO shop_counter AS c USING (SELECT id, stock FROM shop_product WHERE stock >= %s UNION ALL "
         "SELECT 7, 70) AS p ON c.id = p.id WHEN MATCHED THEN UPDATE SET value = p.stock * %s "
         "WHEN NOT MATCHED THEN INSERT (value, id) VALUES (p.stock, p.id)", [2, 100], vendors=("postgresql",)),
    Case("merge-do-nothing", "shop_counter",
         "MERGE INTO shop_counter c USING shop_product p ON p.id = c.id WHEN MATCHED THEN DO NOTHING",
         vendors=("postgresql",)),
    Case("merge-some-rows", "shop_counter",
         "MERGE INTO shop_counter c USING shop_product p ON p.id = c.id WHEN MATCHED AND c.id = 1 THEN "
         "UPDATE SET value = CASE WHEN p.stock > 1 THEN 1 ELSE 2 END", vendors=("postgresql",)),
    Case("merge-percent-literal-no-params", "shop_product",
         "MERGE INTO shop_product t USING shop_counter s ON s.id = t.id WHEN MATCHED AND t.name LIKE '5%' "
         "THEN UPDATE SET stock = 0", vendors=("postgresql",)),
    Case("merge-named-params", "shop_counter",
         "MERGE INTO shop_counter c USING shop_product p ON p.id = c.id AND p.stock < %(s)s "
         "WHEN MATCHED THEN UPDATE SET value = %(v)s", {"s": 3, "v": 5}, vendors=("postgresql",)),
    Case("merge-fails", "shop_counter",
         "MERGE INTO shop_counter c USING shop_product p ON p.id = c.id WHEN MATCHED THEN UPDATE SET value = 1 / 0",
         vendors=("postgresql",)),
    # Beyond capture (a WARNING names the registered table written).
    Case("cte-insert-generated-keys", "shop_counter",
         "WITH n AS (INSERT INTO shop_counter (value) VALUES (5) RETURNING id) SELECT count(*) FROM n",
         vendors=("postgresql",), warns=True),
    Case("cte-reads-a-writing-cte", "shop_counter",
         "WITH d AS (DELETE FROM shop_product WHERE id = 1 RETURNING id), u AS (UPDATE shop_counter SET value = 0 "
         "WHERE id IN (SELECT id FROM d)) SELECT 1", vendors=("postgresql",), warns=True),
    Case("merge-insert-generated-keys", "shop_counter",
         "MERGE INTO shop_counter c USING (SELECT 500 AS v) s ON false WHEN NOT MATCHED THEN INSERT (value) "
         "VALUES (s.v)", vendors=("postgresql",), warns=True),
    Case("mysql-multi-table-update", "shop_counter",
         "UPDATE shop_counter c JOIN shop_product p ON p.id = c.id SET c.value = p.stock", vendors=("mysql",)),
    Case("mysql-multi-table-update-params", "shop_counter",
         "UPDATE shop_counter AS c INNER JOIN shop_product p ON p.id = c.id AND p.stock >= %s "
         "SET c.value = p.stock + %s WHERE p.name <> %s", [2, 100, "x"], vendors=("mysql",)),
    Case("mysql-comma-join-update", "shop_counter",
         "UPDATE shop_counter c, shop_product p SET c.value = 5 WHERE p.id = c.id AND p.name LIKE 'a%%'",
         [], vendors=("mysql",)),
    Case("mysql-multi-table-update-two-tables", "shop_counter",
         "UPDATE shop_counter c JOIN shop_product p ON p.id = c.id SET c.value = 1, p.stock = 9",
         vendors=("mysql",), also=("shop_product",)),
    Case("mysql-multi-table-update-two-tables-params", "shop_counter",
         "UPDATE shop_counter AS c, shop_product p SET p.stock = p.stock + %s, c.value = %s, p.name = 'x%%' "
         "WHERE p.id = c.id AND c.value >= %s", [5, 0, 20], vendors=("mysql",), also=("shop_product",)),
    Case("mysql-multi-table-update-two-tables-no-params", "shop_counter",
         "UPDATE shop_counter c JOIN shop_product p ON p.id = c.id AND p.name LIKE 'a%' SET c.value = 1, p.stock = 9",
         vendors=("mysql",), also=("shop_product",)),
    Case("mysql-multi-table-update-unqualified", "shop_counter",
         "UPDATE shop_counter c JOIN shop_product p ON p.id = c.id SET value = 1, p.stock = 9",
         vendors=("mysql",), warns=True),
    Case("mysql-delete-using", "shop_counter",
         "DELETE FROM shop_counter USING shop_counter JOIN shop_product p ON p.id = shop_counter.id WHERE p.stock > 1",
         vendors=("mysql",), warns=True),
    Case("mention-without-write", "shop_counter",
         "UPDATE shop_note SET text = 'shop_counter' WHERE id IN (SELECT id FROM shop_counter WHERE id < 0)"),
    # executemany.
    Case("executemany-insert", "shop_counter", "INSERT INTO shop_counter (id, value) VALUES (%s, %s)",
         [(10, 1), (11, 2)], many=True, fetch=False),
    Case("executemany-insert-fails-halfway", "shop_counter", "INSERT INTO shop_counter (id, value) VALUES (%s, %s)",
         [(10, 1), (1, 2)], many=True, fetch=False),
    Case("executemany-update", "shop_counter", "UPDATE shop_counter SET value = %s WHERE id = %s",
         [(5, 1), (6, 2), (7, 99)], many=True, fetch=False),
    Case("executemany-update-fails-halfway", "shop_product", "UPDATE shop_product SET sku = %s WHERE id = %s",
         [("z1", 1), ("a2", 3)], many=True, fetch=False),
    Case("executemany-delete", "shop_counter", "DELETE FROM shop_counter WHERE id = %s", [(1,), (3,)],
         many=True, fetch=False),
    Case("executemany-fetch", "shop_counter", "UPDATE shop_counter SET value = %s WHERE id = %s",
         [(5, 1), (6, 2)], many=True),
    Case("executemany-upsert", "shop_counter",
         "INSERT INTO shop_counter (id, value) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET value = excluded.value",
         [(1, 5), (9, 9)], many=True, fetch=False, vendors=("sqlite", "postgresql")),
    Case("executemany-named-params", "shop_counter", "UPDATE shop_counter SET value = %(v)s WHERE id = %(id)s",
         [{"v": 1, "id": 1}, {"v": 2, "id": 3}], many=True, fetch=False, vendors=("postgresql", "mysql")),
    Case("executemany-generated-keys", "shop_counter", "INSERT INTO shop_counter (value) VALUES (%s)",
         [(1,), (2,), (3,)], many=True, fetch=False),
]


@pytest.fixture(scope="module", autouse=True)
def _other_schema(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """``dbevents_other.shop_counter``: a table named like a registered one, elsewhere."""
    if VENDOR == "sqlite":
        yield
        return
    with django_db_blocker.unblock(), connections["stock"].cursor() as cursor:
        kind = "SCHEMA" if VENDOR == "postgresql" else "DATABASE"
        cursor.execute(f"DROP {kind} IF EXISTS dbevents_other" + (" CASCADE" if VENDOR == "postgresql" else ""))
        cursor.execute(f"CREATE {kind} dbevents_other")
        cursor.execute("CREATE TABLE dbevents_other.shop_counter (id integer PRIMARY KEY, value integer)")
        cursor.execute("INSERT INTO dbevents_other.shop_counter VALUES (1, 1), (2, 2)")
    yield
    with django_db_blocker.unblock(), connections["stock"].cursor() as cursor:
        cursor.execute(f"DROP {kind} IF EXISTS dbevents_other" + (" CASCADE" if VENDOR == "postgresql" else ""))


def _rows(table: str) -> dict[Any, tuple[Any, ...]]:
    _label, pk, columns, _initial = TABLES.get(table, (None, "id", ("id",), []))
    with connections["stock"].cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {pk}")
        return {row[0]: tuple(row) for row in cursor.fetchall()}


def _reset() -> None:
    """The tables of every case back to their initial rows (through the stock alias)."""
    with connections["stock"].cursor() as cursor:
        cursor.execute("DELETE FROM shop_item")
        for table, (_label, _pk, columns, initial) in TABLES.items():
            cursor.execute(f"DELETE FROM {table}")
            marks = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", initial)
    if VENDOR != "sqlite":
        with connections["stock"].cursor() as cursor:
            cursor.execute("DELETE FROM dbevents_other.shop_counter")
            cursor.execute("INSERT INTO dbevents_other.shop_counter VALUES (1, 1), (2, 2)")
    if VENDOR == "postgresql":  # the next generated key: the same for both runs
        with connections["stock"].cursor() as cursor:
            for table in TABLES:
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)")
    elif VENDOR == "mysql":
        with connections["stock"].cursor() as cursor:
            for table in TABLES:
                cursor.execute(f"ALTER TABLE {table} AUTO_INCREMENT = 101")
    else:
        with connections["stock"].cursor() as cursor:
            for table in TABLES:
                cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
                cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, 100)", [table])


def _kind(value: Any) -> Any:
    """What execute() returned, comparable across engines: cursors by type, numbers as is."""
    if value is None or isinstance(value, int):
        return value
    return type(value).__name__


def _statement(case: Case) -> Any:
    if case.sql == "composed":
        from psycopg import sql

        return sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(
            sql.Identifier("shop_counter"), sql.Identifier("value"), sql.Identifier("id"))
    return case.sql


def _observe(alias: str, case: Case, atomic: bool) -> dict[str, Any]:
    conn = connections[alias]
    statement = _statement(case)
    seen: dict[str, Any] = {}
    with CaptureQueriesContext(conn) as queries:
        try:
            with transaction.atomic(using=alias) if atomic else contextlib.nullcontext():
                with conn.cursor() as cursor:
                    if case.many:
                        seen["returned"] = _kind(cursor.executemany(statement, case.params))
                    elif case.params is None:
                        seen["returned"] = _kind(cursor.execute(statement))
                    else:
                        seen["returned"] = _kind(cursor.execute(statement, case.params))
                    seen["rowcount"] = cursor.rowcount
                    seen["description"] = [d[0] for d in cursor.description or ()]
                    if VENDOR != "postgresql" and "INSERT" in str(case.sql)[:20]:
                        # Elsewhere it is the connection's latest insert, not the statement's.
                        seen["lastrowid"] = cursor.lastrowid
                    if case.fetch:
                        # Every way of reading the result: one row, a few, the rest.
                        for method, call in (("fetchone", lambda: cursor.fetchone()),
                                             ("fetchmany", lambda: [tuple(r) for r in cursor.fetchmany(1)]),
                                             ("fetchall", lambda: [tuple(r) for r in cursor.fetchall()])):
                            try:
                                row = call()
                                seen[method] = tuple(row) if method == "fetchone" and row is not None else row
                            except Exception as exc:
                                seen[method] = f"raises {type(exc).__module__}.{type(exc).__name__}"
                        seen["rowcount after fetch"] = cursor.rowcount
        except Exception as exc:
            seen["error"] = f"{type(exc).__module__}.{type(exc).__name__}"
    seen["queries"] = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    seen["table"] = _rows(case.table)
    for other in case.also:
        seen[other] = _rows(other)
    return seen


def _expected_events(table: str, before: dict[Any, Any], after: dict[Any, Any]) -> list[tuple[str, Any]]:
    name = TABLES[table][0].split(".")[1].lower() if table in TABLES else table.split("_", 1)[1]
    out = [(f"{name}__created", k) for k in after if k not in before]
    out += [(f"{name}__deleted", k) for k in before if k not in after]
    out += [(f"{name}__updated", k) for k in after if k in before and after[k] != before[k]]
    return sorted(out, key=repr)


@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_statement_behaves_as_on_the_stock_engine(case: Case, atomic: bool, caplog: Any) -> None:
    if VENDOR not in case.vendors:
        pytest.skip(f"{case.id}: not {VENDOR} syntax")
    if case.id == "insert-own-returning" and VENDOR == "mysql" and not connections["default"].mysql_is_mariadb:
        pytest.skip("MySQL has no RETURNING")
    _reset()
    before = _rows(case.table)
    others = {t: _rows(t) for t in case.also}
    stock = _observe("stock", case, atomic)
    _reset()
    caplog.set_level(logging.WARNING, logger="dbevents")
    with capture_events() as events:
        ours = _observe("default", case, atomic)
    assert ours == stock
    warnings = [r.getMessage() for r in caplog.records if r.name == "dbevents"]
    if case.warns:
        assert any(case.table in w for w in warnings), warnings
        return
    assert warnings == []
    got = sorted(((e.name, e.pk) for e in events), key=repr)
    expected = _expected_events(case.table, before, ours["table"])
    for other in case.also:
        expected = sorted(expected + _expected_events(other, others[other], ours[other]), key=repr)
    if case.replaces and "error" not in ours:
        name = expected[0][0].split("__")[0] if expected else TABLES[case.table][0].split(".")[1].lower()
        expected = [e for e in expected if e[1] not in case.replaces]
        expected += [(f"{name}__{action}", k) for k in case.replaces for action in ("created", "deleted")
                     if (action == "created" and k in ours["table"]) or (action == "deleted" and k in before)]
        expected.sort(key=repr)
    assert got == expected
    tables = {TABLES[t][0].split(".")[1].lower(): t for t in (case.table, *case.also) if t in TABLES}
    for event in events:
        if not event.name.endswith("__deleted"):
            table = tables.get(event.name.split("__")[0], case.table)
            columns = TABLES[table][2] if table in TABLES else ("id",)
            row = ours["table" if table == case.table else table][event.pk]
            assert tuple(event.payload[c] for c in columns if c != "data") == row[:len(columns) - ("data" in columns)]


@pytest.mark.skipif(VENDOR != "postgresql", reason="psycopg 3 batches: PostgreSQL only")
def test_executemany_is_one_driver_batch_on_psycopg(monkeypatch: Any) -> None:
    """A captured ``executemany()`` reaches psycopg as one ``executemany(..., returning=True)``
    (one pipeline, as the stock engine's), not one ``execute()`` per parameter set."""
    import psycopg

    _reset()
    calls: list[str] = []
    for name in ("execute", "executemany"):
        original = getattr(psycopg.ClientCursor, name)

        def counted(self: Any, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(psycopg.ClientCursor, name, counted)
    with capture_events() as events, transaction.atomic(), connections["default"].cursor() as cursor:
        del calls[:]  # a new connection's set-up statements
        cursor.executemany("INSERT INTO shop_counter (value) VALUES (%s)", [(v,) for v in range(50)])
        assert cursor.rowcount == 50
        assert calls == ["executemany"], calls  # at COMMIT come the outbox rows
    assert sorted(e.payload["value"] for e in events) == list(range(50))
