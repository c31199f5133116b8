"""The RETURNING path: the statement gets ``RETURNING <the table's columns>`` appended (or its own
RETURNING list extended), the rows come back with the statement itself -- exact under
concurrency, no extra query -- and Django is handed exactly the result it would have had."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dbevents import conf
from dbevents.capture.cursor import UNSET, replay
from dbevents.capture.pending import Row, one_per_key
from dbevents.capture.rows import (
    CREATED,
    DELETED,
    INTEGER_TYPES,
    UPDATED,
    column,
    given_keys,
    statement_pks,
    unqualified,
)
from dbevents.capture.write import Write, cascade_of, replaced_rows
from dbevents.registry import TableInfo
from dbevents.sql import Statement

ACTIONS = {"insert": CREATED, "update": UPDATED, "delete": DELETED}


def run(w: Write) -> Any:
    """Run ``w`` with capture's RETURNING columns and record the rows it returned."""
    stmt: Statement = w.stmt
    info, params = w.info, w.params
    columns, xmax = returning_columns(w)
    action = ACTIONS[stmt.kind]
    existing = None
    if stmt.upsert and not xmax:
        existing = _existing_before_upsert(w)
    # Only pending events can conflict: skip the key analysis on the usual path.
    pks = statement_pks(stmt, info, params) if w.pending.incomplete else None
    w.pending.settle(info, action, pks, stmt.kind == "insert" and not stmt.upsert and not stmt.replace)
    replaced = replaced_rows(w) if stmt.replace else None
    cascaded = cascade_of(w)
    if stmt.returning is not None:
        sql = f"{stmt.sql[:stmt.end]}, {', '.join(columns)}{stmt.sql[stmt.end:]}"
    else:
        sql = f"{stmt.sql[:stmt.end]} RETURNING {', '.join(columns)}{stmt.sql[stmt.end:]}"
    result = w.run(sql, params)
    wrapper = w.cursor
    raw = wrapper.cursor
    ours = len(columns)
    if stmt.returning is None and stmt.kind != "insert":
        # Django reads only the row count: the rows are recorded chunk by chunk as they are
        # fetched (a large transaction's events go to the outbox as it runs: bounded memory).
        replay(wrapper, raw, None, None)
        if cascaded:
            w.pending.record_cascade(cascaded, w.mutes)
        _record_in_chunks(w, info, raw, ours, action)
        return result
    with w.connection.wrap_database_errors:
        rows = raw.fetchall()
        description = raw.description
    if stmt.returning is not None:
        replay(wrapper, raw, [tuple(r[:-ours]) for r in rows], description[:-ours])
    else:
        replay(wrapper, raw, None, None)
    recorded = returned(w, info, rows, ours, action, xmax, existing)
    if stmt.kind == "insert" and stmt.returning is None and w.vendor.rebuilds_insert_result and recorded:
        # RETURNING makes MySQLdb report neither the first new id nor upsert's 2-per-update
        # row count: give Django's cursor what the plain statement would have.
        created = [pk for pk, _, act in recorded if act == CREATED]
        replay(
            wrapper, raw, None, None,
            rowcount=(len(created) + 2 * (len(recorded) - len(created)) if stmt.upsert
                      else len(recorded) + len(replaced) if replaced else None),  # REPLACE: deleted + inserted
            lastrowid=mysql_lastrowid(stmt, info, params, created),
        )
        result = wrapper.cursor.rowcount  # what MySQLdb's execute() returns
    if stmt.upsert:
        recorded = one_per_key(recorded)
    if replaced:
        w.record(info, [(info.pk_of(r), r, DELETED) for r in replaced])
    if cascaded:
        w.pending.record_cascade(cascaded, w.mutes)
    w.record(info, recorded)
    return result


def _record_in_chunks(w: Write, info: TableInfo, raw: Any, ours: int, action: str) -> None:
    """Record the rows an UPDATE or DELETE returned through capture's columns, fetched in chunks
    of ``DBEVENTS_TRANSACTION_CHUNK``: one statement's events, in primary-key order per chunk."""
    size = int(conf.get("DBEVENTS_TRANSACTION_CHUNK"))
    done = 0
    while True:
        with w.connection.wrap_database_errors:
            rows = raw.fetchmany(size)
        if not rows and done:
            return
        w.pending.record(info, returned(w, info, rows, ours, action, False), w.mutes, start=done)
        done += len(rows)
        if len(rows) < size:
            return


def returning_columns(w: Write) -> tuple[list[str], bool]:
    """What capture adds to a statement's RETURNING list: the table's columns, and on a
    PostgreSQL upsert whether each row is new (``xmax = 0``)."""
    stmt: Statement = w.stmt
    qn = w.connection.ops.quote_name
    prefix = w.vendor.returning_ref(unqualified(stmt.ref))
    columns = [f"{prefix}{qn(column(f))}" for f in w.info.fields]
    xmax = stmt.upsert and w.vendor.upsert_xmax
    if xmax:
        columns.append(f"({unqualified(stmt.ref)}.xmax = 0)")
    return columns, xmax


def returned(w: Write, info: TableInfo, rows: Iterable[Sequence[Any]], ours: int, action: str, xmax: bool,
             existing: Any = None) -> list[Row]:
    """The rows a statement returned through capture's columns (its last ``ours``), as
    (key, converted values, action)."""
    recorded: list[Row] = []
    for row in rows:
        value = tuple(row[-ours:])
        act = action
        if xmax:
            act = CREATED if value[-1] else UPDATED
            value = value[:-1]
        converted = w.rows.convert(info, value)
        if existing is not None and act == CREATED and _existed(info, converted, existing):
            act = UPDATED
        recorded.append((info.pk_of(converted), converted, act))
    return recorded


def run_batch(w: Write, param_list: list[Any]) -> list[list[Row]]:
    """``executemany()`` as one driver batch (psycopg 3 sends it in a pipeline: one round trip,
    as the stock engine's), each statement with capture's RETURNING columns; records the rows
    of each parameter set as one statement's."""
    stmt: Statement = w.stmt
    info = w.info
    columns, xmax = returning_columns(w)
    action = ACTIONS[stmt.kind]
    sql = f"{stmt.sql[:stmt.end]} RETURNING {', '.join(columns)}{stmt.sql[stmt.end:]}"
    if w.pending.incomplete:
        keys = [statement_pks(stmt, info, one) for one in param_list]
        pks = None if any(k is None for k in keys) else set().union(*keys)  # type: ignore[arg-type]
        w.pending.settle(info, action, pks, stmt.kind == "insert" and not stmt.upsert)
    raw = w.cursor.cursor
    raw.executemany(sql, param_list, returning=True)
    results = []
    with w.connection.wrap_database_errors:
        while True:
            results.append(raw.fetchall() if raw.description is not None else [])
            if not raw.nextset():
                break
    written = [returned(w, info, found, len(columns), action, xmax) for found in results]
    for recorded in written:
        w.record(info, one_per_key(recorded) if stmt.upsert else recorded)
    return written


def batch_returns(w: Write) -> bool:
    """Whether an ``executemany()`` can run as the driver's own batch with capture's RETURNING
    columns: where the driver returns each statement's rows, and capture needs nothing read
    before the statement."""
    stmt: Statement = w.stmt
    return (w.vendor.batch_returns() and stmt.returning is None and not stmt.prefix_end
            and not (stmt.kind == "delete" and w.info.db_children))


def mysql_lastrowid(stmt: Statement, info: TableInfo, params: Any, created: list[Any]) -> Any:
    """MySQL's insert id: the first generated key of a multi-row INSERT, or the last one given
    explicitly."""
    if not created or not isinstance(created[0], int):
        return UNSET
    return created[-1] if given_keys(stmt, info, params) is not None else created[0]


def _existing_before_upsert(w: Write) -> Any:
    """What tells created from updated rows of an upsert where RETURNING cannot: the keys among
    the statement's own that exist already, else the highest key before it."""
    stmt: Statement = w.stmt
    info = w.info
    keys = given_keys(stmt, info, w.params)
    if keys is not None:
        return ("keys", (set(w.rows.existing_keys(info, keys)), set(keys)))
    if info.pk.get_internal_type() in INTEGER_TYPES:
        qn = w.connection.ops.quote_name
        found = w.rows.query(f"SELECT MAX({qn(column(info.pk))}) FROM {qn(info.model._meta.db_table)}", ())
        return ("max", found[0][0] if found and found[0][0] is not None else None)
    return None


def _existed(info: TableInfo, row: tuple[Any, ...], existing: Any) -> bool:
    kind, value = existing
    pk = info.pk_of(row)
    if kind == "keys":
        before, given = value
        # A row that conflicted on another unique key keeps its own, older key.
        return pk in before or pk not in given
    return value is not None and pk <= value
