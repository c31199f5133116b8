"""The SELECT ... FOR UPDATE path, for statements without RETURNING (MySQL; MariaDB UPDATE and
multi-table DELETE): the keys come from the statement's own parameters when its WHERE is a
primary-key filter, else from ``SELECT ... FOR UPDATE`` with the same WHERE, and the statement is
then restricted to those keys so that rows inserted concurrently cannot slip in unseen. It runs
inside a transaction: the caller's, or one of capture's own for an autocommit statement."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dbevents.capture.rows import CREATED, DELETED, INTEGER_TYPES, UPDATED, given_keys, key_list, statement_pks
from dbevents.capture.write import Write, cascade_of, replaced_rows, rows_by_given_keys
from dbevents.registry import TableInfo
from dbevents.sql import Statement

logger = logging.getLogger("dbevents")

# Beyond this many keys a restriction lists the range of the locked keys, not each one (see README).
RESTRICT_BY_RANGE = 200_000


def run(w: Write) -> Any:
    """Run ``w`` restricted to the rows capture locked, and record them."""
    stmt: Statement = w.stmt
    info, params = w.info, w.params
    if stmt.kind == "insert":
        return _insert(w)
    action = UPDATED if stmt.kind == "update" else DELETED
    sql = stmt.sql
    known = statement_pks(stmt, info, params)
    deleted_rows: list[tuple[Any, ...]] = []
    cascaded = None
    if stmt.kind == "delete":
        deleted_rows = w.rows.of_statement(stmt, info, params)
        keys = [info.pk_of(r) for r in deleted_rows]
        cascaded = cascade_of(w, keys)
    elif known is not None:
        keys = list(known)
    else:
        keys = w.rows.keys_of_statement(stmt, info, params)
    w.pending.settle(info, action, set(keys), False)
    if known is None or set(keys) != set(known):
        sql, params = restrict(w, stmt, info, params, keys)
    result = w.run(sql, params)
    if known is not None and stmt.kind == "update":
        keys = _matched_keys(w, info, keys, w.cursor.cursor.rowcount)
    if cascaded:
        w.pending.record_cascade(cascaded, w.mutes)
    if stmt.kind == "delete":
        w.record(info, [(info.pk_of(r), r, action) for r in deleted_rows])
    else:
        w.record(info, [(k, None, action) for k in keys])
        if w.own_transaction:
            w.pending.load_missing(w.pending.incomplete)
    return result


def restrict(w: Write, stmt: Statement, info: TableInfo, params: Any, keys: list[Any]) -> tuple[str, Any]:
    """Limit an UPDATE/DELETE to the rows capture locked, so concurrently inserted rows that
    match its WHERE cannot be written without an event."""
    col = w.rows.key_columns(info, stmt.ref)
    prep = [v for k in keys for v in info.pk_db_values(k, w.connection)]
    sql = stmt.sql
    # The driver %-formats a statement only when it has parameters: escape the original text
    # when capture gives it its first ones.
    esc: Callable[[str], str] = (lambda text: text.replace("%", "%%")) if params is None else str
    if params is None:
        params = []
    if isinstance(params, dict):
        names = [f"dbevents_pk_{i}" for i in range(len(prep))]
        marks = key_list([f"%({n})s" for n in names], len(info.pk_fields))
        new_params: Any = {**params, **dict(zip(names, prep, strict=True))}
    else:
        marks = key_list(["%s"] * len(prep), len(info.pk_fields))
        plist = list(params)
        cut = stmt.count_params_before(stmt.where_end)
        new_params = plist[:cut] + prep + plist[cut:]
    cond = f"{col} IN ({marks})" if prep else "1 = 0"
    if len(prep) > RESTRICT_BY_RANGE and not info.composite and info.pk.get_internal_type() in INTEGER_TYPES:
        # Beyond this many keys the list would strain max_allowed_packet. The range of the
        # locked keys is exact unless another transaction, between the SELECT and this
        # statement, makes a row inside it match the WHERE (see README).
        low, high = min(prep), max(prep)
        if isinstance(params, dict):
            marks_range = "%(dbevents_pk_low)s AND %(dbevents_pk_high)s"
            new_params = {**params, "dbevents_pk_low": low, "dbevents_pk_high": high}
        else:
            marks_range = "%s AND %s"
            new_params = plist[:cut] + [low, high] + plist[cut:]
        cond = f"{col} BETWEEN {marks_range}"
    if stmt.where:
        a, b = stmt.where
        new_sql = f"{esc(sql[:a])} ({esc(sql[a:b])}) AND {cond} {esc(sql[b:])}"
    else:
        new_sql = f"{esc(sql[:stmt.where_end])} WHERE {cond} {esc(sql[stmt.where_end:])}"
    return new_sql, new_params


def _matched_keys(w: Write, info: TableInfo, keys: list[Any], rowcount: int) -> list[Any]:
    """The keys of a primary-key UPDATE that matched a row. MySQL reports matched rows (Django
    connects with CLIENT.FOUND_ROWS); only a partial match needs a look-up, and the rows it
    finds are the ones this transaction just locked by updating them."""
    if rowcount == len(keys):
        return keys
    if rowcount <= 0:
        return []
    return w.rows.existing_keys(info, keys)


def _insert(w: Write) -> Any:
    """An INSERT without RETURNING (MySQL): keys from its own values, else from the driver's
    first insert id and row count."""
    stmt: Statement = w.stmt
    info, params = w.info, w.params
    given = given_keys(stmt, info, params)
    written = rows_by_given_keys(w, stmt, info, given) if given is not None else None
    replaced = replaced_rows(w) if stmt.replace else None
    result = w.run(stmt.sql, params)
    raw = w.cursor.cursor
    if replaced:
        w.record(info, [(info.pk_of(r), r, DELETED) for r in replaced])
    if written is not None:
        w.record(info, written)
    elif stmt.upsert or stmt.ignore:
        logger.error("dbevents: %s on %s (%r) without primary keys in its values: this database cannot "
                     "tell which rows it wrote, so it produces no events", stmt.keyword.upper(),
                     info.model._meta.label, w.connection.alias)
        w.pending.next_statement()
    else:
        first, count = raw.lastrowid, raw.rowcount
        # MySQL reports the first id of a multi-row insert; ids are consecutive for InnoDB
        # "simple inserts" with auto_increment_increment = 1.
        w.record(info, [(first + i, None, CREATED) for i in range(count)])
    return result
