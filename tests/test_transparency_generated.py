"""Generated statements through the differential harness of tests/test_transparency.py: random
INSERT/UPDATE/DELETE shapes (filters of every kind, literals with quotes, semicolons and %,
comments, parameters or literals, autocommit or a transaction; on PostgreSQL also as a
data-modifying CTE or a MERGE) must behave as on the stock
engine, and their events must be the rows they changed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbevents.testing import capture_events
from tests.test_transparency import VENDOR, Case, _expected_events, _observe, _other_schema, _reset, _rows

_ = _other_schema  # its autouse fixture: the table _reset() also resets

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "stock"])

NAMES = ["apple", "50%", "it's", "a;b", "--x", "/*y*/", "%s"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@st.composite
def condition(draw: Any) -> tuple[str, list[Any]]:
    """A WHERE condition on shop_product, with its parameters."""
    kind = draw(st.sampled_from(["pk", "pk-in", "stock", "name-literal", "name-param", "like", "or", "none"]))
    if kind == "pk":
        return "id = %s", [draw(st.integers(0, 4))]
    if kind == "pk-in":
        keys = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
        return f"id IN ({', '.join(['%s'] * len(keys))})", keys
    if kind == "stock":
        op = draw(st.sampled_from(["<", ">=", "<>"]))
        return f"stock {op} %s", [draw(st.integers(0, 4))]
    if kind == "name-literal":
        return f"name = {_quote(draw(st.sampled_from(NAMES)))}".replace("%", "%%"), []
    if kind == "name-param":
        return "name = %s", [draw(st.sampled_from(NAMES))]
    if kind == "like":
        return "name LIKE %s", [draw(st.sampled_from(["a%", "%'%", "5%", "%;%"]))]
    if kind == "or":
        return "(id = %s OR stock = %s)", [draw(st.integers(0, 4)), draw(st.integers(0, 4))]
    return "", []


@st.composite
def statement(draw: Any) -> Case:
    verb = draw(st.sampled_from(["update", "delete", "insert"]))
    where, params = draw(condition())
    clause = f" WHERE {where}" if where else ""
    # PostgreSQL: the same write as a data-modifying CTE, or as a MERGE.
    form = draw(st.sampled_from(["plain", "cte", "merge"])) if VENDOR == "postgresql" else "plain"
    matched = f" AND ({where})" if where else ""
    if verb == "update":
        value = draw(st.sampled_from(["stock + 1", "%s", "0"]))
        set_params = [draw(st.integers(5, 9))] if value == "%s" else []
        name = draw(st.sampled_from(["", ", name = 'x;y'", ", name = %s"]))
        name_params = ["n%"] if name.endswith("%s") else []
        assign = f"stock = {value}{name}"
        if form == "merge":
            sql = f"MERGE INTO shop_product USING (SELECT 1) AS s ON true WHEN MATCHED{matched} THEN UPDATE SET {assign}"
            params = params + set_params + name_params
        else:
            sql = f"UPDATE shop_product SET {assign}{clause}"
            params = set_params + name_params + params
    elif verb == "delete":
        if form == "merge":
            sql = f"MERGE INTO shop_product USING (SELECT 1) AS s ON true WHEN MATCHED{matched} THEN DELETE"
        else:
            sql = f"DELETE FROM shop_product{clause}"
    else:
        sku = draw(st.sampled_from(["a1", "z9"]))  # a1 exists: a unique-key violation
        sql = "INSERT INTO shop_product (sku, name, stock, data) VALUES (%s, %s, %s, '{}')"
        params = [sku, draw(st.sampled_from(NAMES)), draw(st.integers(0, 3))]
    if form == "cte" and verb != "insert":
        sql = f"WITH w AS ({sql} RETURNING id) SELECT count(*) FROM w"
    comment = draw(st.sampled_from(["", " -- done", " /* c */", ";"]))
    sql += comment
    if not params and "%%" in sql:
        sql = sql.replace("%%", "%")  # no parameters: the driver does not %-format
    return Case("generated", "shop_product", sql, params or None)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=statement(), atomic=st.booleans())
def test_generated_statement_behaves_as_on_the_stock_engine(case: Case, atomic: bool) -> None:
    _reset()
    before = _rows(case.table)
    stock = _observe("stock", case, atomic)
    _reset()
    handler = _Collect()
    logging.getLogger("dbevents").addHandler(handler)
    try:
        with capture_events() as events:
            ours = _observe("default", case, atomic)
    finally:
        logging.getLogger("dbevents").removeHandler(handler)
    assert ours == stock, case.sql
    assert handler.messages == [], case.sql
    got = sorted(((e.name, e.pk) for e in events), key=repr)
    assert got == _expected_events(case.table, before, ours["table"]), (case.sql, case.params, VENDOR)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
