"""The statement recogniser: which statements are writes to which table, and their clauses."""

from __future__ import annotations

import pytest

from dbevents.sql import analyse, pk_only_where, unquote, values_rows, write_target


@pytest.mark.parametrize(
    "sql, expected",
    [
        ('SELECT "t"."id" FROM "t"', None),
        ("  select 1", None),
        ("SAVEPOINT s1", None),
        ("BEGIN", None),
        ('INSERT INTO "shop_order" ("a") VALUES (%s) RETURNING "shop_order"."id"', ("insert", "shop_order")),
        ("insert into shop_order(a) values (%s)", ("insert", "shop_order")),
        ("/* app */ -- note\n INSERT INTO `shop_order` (`a`) VALUES (%s)", ("insert", "shop_order")),
        ("INSERT OR IGNORE INTO [shop_order] (a) VALUES (%s)", ("insert", "shop_order")),
        ("REPLACE INTO shop_order (a) VALUES (%s)", ("insert", "shop_order")),
        ('INSERT INTO "public"."Shop_Order" DEFAULT VALUES', ("insert", "public.shop_order")),
        ("UPDATE ONLY shop_order SET a = 1", ("update", "shop_order")),
        ('update "shop_order" AS o set "a" = %s where o.id = %s', ("update", "shop_order")),
        ("DELETE FROM shop_order", ("delete", "shop_order")),
        ("delete from `shop_order` where `id` in (%s)", ("delete", "shop_order")),
        ("DELETE `shop_item` FROM `shop_item` INNER JOIN `shop_order` ON (1) WHERE 1", ("delete", "shop_item")),
        ("WITH x AS (SELECT 1) UPDATE shop_order SET a = 1", ("update", "shop_order")),
        ("WITH x AS (UPDATE shop_order SET a = 1 RETURNING id) SELECT * FROM x", ("compound", "")),
        ("TRUNCATE shop_order", ("unsupported", "")),
        ("MERGE INTO shop_order USING x ON (1) WHEN MATCHED THEN DELETE", ("merge", "shop_order")),
        ("MERGE INTO shop_order o USING x ON (1) WHEN NOT MATCHED BY SOURCE THEN DELETE", ("unsupported", "")),
        ("UPDATE shop_order o JOIN shop_item i ON (1) SET o.a = 1", ("update", "shop_order")),
        ("UPDATE shop_order o JOIN shop_item i ON (1) SET o.a = 1, i.b = 2", ("compound", "")),
        ("UPDATE shop_order o, shop_item i SET a = 1", ("unsupported", "")),
    ],
)
def test_write_target(sql, expected):
    assert write_target(sql) == expected


def test_update_clauses_and_placeholders():
    sql = 'UPDATE "t" SET "a" = %s, "b" = \'it\'\'s %%\' WHERE ("t"."x" = %s AND "t"."y" IN (SELECT 1 WHERE 2)) ORDER BY "t"."z"'
    stmt = analyse(sql, "postgresql")
    assert sql[stmt.where[0]:stmt.where[1]].strip() == '("t"."x" = %s AND "t"."y" IN (SELECT 1 WHERE 2))'
    assert stmt.count_params_before(stmt.where[0]) == 1
    assert stmt.source == '"t"' and stmt.returning is None


def test_mysql_backslash_strings():
    sql = "UPDATE `t` SET `a` = 'x\\' WHERE y' WHERE `t`.`id` = %s"
    stmt = analyse(sql, "mysql")
    assert sql[stmt.where[0]:stmt.where[1]].strip() == "`t`.`id` = %s"
    assert pk_only_where(stmt, "id")


@pytest.mark.parametrize(
    "where, expected",
    [
        ('"t"."id" = %s', True),
        ('"t"."id" IN (%s, %s, %s)', True),
        ("(id = %s)", True),
        ('"t"."id" > %s', False),
        ('"t"."id" IN (%s) AND "t"."x" = %s', False),
        ('"t"."idx" = %s', False),
    ],
)
def test_pk_only_where(where, expected):
    stmt = analyse(f'DELETE FROM "t" WHERE {where}', "postgresql")
    assert pk_only_where(stmt, "id") is expected


def test_insert_upsert_and_values():
    stmt = analyse('INSERT INTO "t" ("k", "v") VALUES (%s, %s), (%s, %s) ON CONFLICT("k") DO UPDATE SET "v" = EXCLUDED."v" RETURNING "t"."id"', "postgresql")
    assert stmt.upsert and not stmt.ignore and stmt.columns == ["k", "v"]
    assert values_rows(stmt, [1, 2, 3, 4]) == [[1, 2], [3, 4]]
    assert analyse('INSERT INTO "t" ("k") VALUES (%s) ON CONFLICT DO NOTHING', "postgresql").ignore
    assert analyse("INSERT INTO `t` (`k`) VALUES (%s) ON DUPLICATE KEY UPDATE `k` = VALUE(`k`)", "mysql").upsert
    unnest = analyse('INSERT INTO "t" ("k") SELECT * FROM UNNEST((%s)::varchar[]) RETURNING "t"."id"', "postgresql")
    assert values_rows(unnest, [["a", "b"]]) is None and unnest.returning is not None


def test_several_statements_in_one_string_are_not_followed():
    assert analyse("UPDATE t SET a = 1; DELETE FROM t", "postgresql") is None
    assert analyse("UPDATE t SET a = 1;", "postgresql") is not None


def test_unquote():
    assert unquote('"Schema"."Ta""ble"') == 'schema.ta"ble'
    assert unquote("`db`.`t`") == "db.t"
