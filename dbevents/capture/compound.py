"""Statements that write several tables, or a table in several ways, with no RETURNING to tell:
a WITH list that writes (PostgreSQL: ``WITH d AS (DELETE ... RETURNING *) INSERT INTO archive
SELECT * FROM d``), a multi-table UPDATE (MySQL: ``UPDATE t JOIN u ON ... SET t.a = ..., u.b =
...``) and MERGE (PostgreSQL 15+, which has no MERGE ... RETURNING before 17).

The rows each write is about to change are read and locked before the statement and the write
is restricted to them (a CTE's RETURNING rows never reach the client); a main statement after
the CTEs takes the RETURNING path. And the WARNINGs for the statements capture cannot follow."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dbevents import conf
from dbevents.capture import locking, returning
from dbevents.capture.cursor import replay
from dbevents.capture.pending import Row
from dbevents.capture.rows import CREATED, DELETED, UPDATED, column, given_keys, key_list
from dbevents.capture.write import Write, rows_by_given_keys
from dbevents.registry import TableInfo, get_registry
from dbevents.sql import Merge, Part, Statement, analyse_merge, compound_writes, table_names, write_target

logger = logging.getLogger("dbevents")

Watched = list[tuple[Part, "TableInfo | None"]]  # each write of the statement, and its watched table


def run(w: Write, watched: Watched) -> Any:
    """Run a statement that writes several tables (``w.stmt``: its first watched write)."""
    sql, params, vendor = w.stmt.sql, w.params, w.vendor.name
    if params is None and any(i is not None and p.before for p, i in watched):
        # Restricting a write gives the statement parameters: the driver then %-formats it.
        sql, params = sql.replace("%", "%%"), []
        watched = [(p, i) for p, (_, i) in zip(compound_writes(sql, vendor) or [], watched, strict=True)]
    # A CTE's write is read before it runs, so its SELECT must not need a CTE that writes;
    # the main statement needs that only for the rows a DB_CASCADE deletes with its own.
    warn_parts(w.connection, [(p, i) for p, i in watched if p.stmt is None or not p.self_contained and (
        p.before or i is not None and p.stmt.kind == "delete" and bool(i.db_children))], sql)
    recorders: list[Callable[[], None]] = []
    # From the last write to the first, each analysed anew in the statement as restricted so far.
    for index in reversed(range(len(watched))):
        part, part_info = watched[index]
        if not part.before or part_info is None or part.stmt is None or not part.self_contained:
            continue
        restricted = _before(w, part.stmt, part_info, params, recorders)
        if restricted != (sql, params):
            sql, params = restricted
            fresh = compound_writes(sql, vendor)
            if fresh is None or len(fresh) != len(watched):
                raise RuntimeError(f"dbevents: the restricted statement cannot be analysed: {sql[:300]}")
            watched = [(p, i) for p, (_, i) in zip(fresh, watched, strict=True)]

    def run_and_record(run_sql: str, run_params: Any) -> Any:
        result = w.run(run_sql, run_params)
        for record in reversed(recorders):  # in text order
            record()
        return result

    main, main_info = watched[-1] if watched and not watched[-1][0].before else (None, None)
    if main is not None and main_info is not None and main.stmt is not None and (
            main.self_contained or main.stmt.kind != "delete" or not main_info.db_children):
        return returning.run(Write(main.stmt, main_info, params, run_and_record, w.context, w.mutes,
                                   w.connection, w.vendor, w.rows, w.pending))
    result = run_and_record(sql, params)
    wrapper = w.cursor
    raw = wrapper.cursor
    with w.connection.wrap_database_errors:
        rows = raw.fetchall() if raw.description is not None else None
        replay(wrapper, raw, rows, raw.description)
    return result


def _before(w: Write, stmt: Statement, info: TableInfo, params: Any, recorders: list[Callable[[], None]]) -> tuple[str, Any]:
    """Read (and lock) the rows one UPDATE/DELETE of the statement is about to write and restrict
    it to them, or take the keys an INSERT names; add what records its events once it ran."""
    if stmt.kind == "insert":
        given = given_keys(stmt, info, params)
        if given is None:
            logger.warning("dbevents: an INSERT into %s (table %s) on %r inside a WITH query, whose keys the "
                           "database generates, produces no events: a CTE's rows do not reach the client; give "
                           "the keys or move the INSERT out of the WITH list: %.300s", info.model._meta.label,
                           info.key, w.connection.alias, stmt.sql)
            return stmt.sql, params
        written = rows_by_given_keys(w, stmt, info, given)
        recorders.append(lambda: w.record(info, written))
        return stmt.sql, params
    if stmt.kind == "delete":
        deleted = w.rows.of_statement(stmt, info, params)
        keys = [info.pk_of(r) for r in deleted]
        cascaded = w.rows.db_cascade(info, keys) if info.db_children else None
        w.pending.settle(info, DELETED, set(keys), False)

        def record_deleted() -> None:
            if cascaded:
                w.pending.record_cascade(cascaded, w.mutes)
            w.record(info, [(info.pk_of(r), r, DELETED) for r in deleted])

        recorders.append(record_deleted)
    else:
        keys = w.rows.keys_of_statement(stmt, info, params)
        w.pending.settle(info, UPDATED, set(keys), False)
        recorders.append(lambda: w.record(info, [(k, None, UPDATED) for k in keys]))
    return locking.restrict(w, stmt, info, params, keys)


def warn_parts(connection: Any, watched: Watched, sql: str) -> None:
    """A WARNING naming the watched tables of the writes capture cannot follow."""
    tables = get_registry().tables
    hit = {p.table for p, i in watched if i is not None} | {
        n for p, i in watched if not p.table for n in registered_in(p.text, tables)}
    if hit:
        logger.warning("dbevents: a write inside a WITH query to registered table(s) %s on %r has a shape "
                       "capture cannot follow (or names a CTE that writes); it produces no events: %.300s",
                       ", ".join(sorted(hit)), connection.alias, sql)


def warn_several(connection: Any, sql: str, parts: list[str]) -> None:
    """Several statements in one ``execute()`` (PostgreSQL runs them; SQLite, and MySQL
    without ``CLIENT.MULTI_STATEMENTS``, refuse) run uncaptured: capture follows one
    statement at a time. Say so when they wrote registered tables."""
    tables = get_registry().tables
    hit = set()
    for part in parts:
        if write_target(part) is not None:
            hit |= registered_in(part, tables)
    if hit and conf.get("DBEVENTS_ENABLED"):
        logger.warning(
            "dbevents: %d statements in one execute() on %r write registered table(s) %s; dbevents "
            "captures one statement per execute(), so they produce no events -- run them one by one: "
            "%.300s", len(parts), connection.alias, ", ".join(sorted(hit)), sql,
        )

def warn_unsupported(connection: Any, sql: str, tables: dict[str, TableInfo]) -> None:
    """A WARNING naming the watched tables a statement capture cannot follow mentions."""
    hit = registered_in(sql, tables)
    if hit:
        logger.warning(
            "dbevents: a statement dbevents cannot capture (TRUNCATE, or a WITH list, MERGE or "
            "multi-table UPDATE of a shape it cannot follow) mentions registered table(s) %s on %r; "
            "it produces no events: %.300s", ", ".join(sorted(hit)), connection.alias, sql,
        )


def registered_in(sql: str, tables: dict[str, TableInfo]) -> set[str]:
    """The watched tables a statement names (as identifiers, unqualified)."""
    return {name for name in table_names(sql) if name in tables and "." not in name}


# ---------------------------------------------------------------------- MERGE


def run_merge(w: Write) -> Any:
    """``MERGE``: the target rows its join matches are read and locked before it, its WHEN
    MATCHED clauses restricted to them; the keys its INSERT names are read from the source.
    After it, a row's new version (ctid) tells updated from untouched, a missing row was
    deleted -- and when these do not add up to its row count (an INSERT of generated keys), a
    WARNING says how many rows it missed."""
    merge: Merge = w.stmt
    info, params = w.info, w.params
    qn = w.connection.ops.quote_name
    named = isinstance(params, dict)

    def between(a: int, b: int) -> list[Any]:
        if params is None or named:
            return []
        return list(params)[merge.count_params_before(a):merge.count_params_before(b)]

    matched: list[tuple[Any, ...]] = []
    if any(c.matched and c.action != "nothing" for c in merge.clauses):
        args = params if named else (between(*merge.source) + between(*merge.on)) or None
        cols = ", ".join(f"{merge.ref}.{qn(column(f))}" for f in info.fields)
        matched = w.rows.query(
            f"SELECT {cols} FROM {merge.target} JOIN {merge.sql[slice(*merge.source)]} "
            f"ON {merge.sql[slice(*merge.on)]} FOR UPDATE OF {merge.ref}", args)
    before = {info.pk_of(r): r for r in (w.rows.convert(info, raw) for raw in matched)}
    candidates = _insert_keys(w, merge, between)
    w.pending.settle(info, UPDATED, set(before) | set(candidates), False)
    versions = _row_versions(w, [*before, *candidates])
    sql, run_params = _restrict_merge(w, merge, list(before))
    result = w.run(sql, run_params)
    count = w.cursor.cursor.rowcount
    after = _row_versions(w, [*before, *candidates])
    deleted: list[Row] = [(k, row, DELETED) for k, row in before.items() if k not in after]
    updated: list[Row] = [(k, None, UPDATED) for k in before if k in after and after[k] != versions.get(k)]
    created: list[Row] = [(k, None, CREATED) for k in candidates if k in after and k not in versions]
    missed = (count or 0) - len(deleted) - len(updated) - len(created)
    if missed > 0:
        logger.warning("dbevents: a MERGE into %s (table %s) on %r wrote %d row(s) whose keys capture cannot "
                       "know (an INSERT of generated keys: name the key column in its INSERT): they produce no "
                       "events", info.model._meta.label, info.key, w.connection.alias, missed)
    for rows in (deleted, updated, created):
        w.record(info, rows)
    return result


def _insert_keys(w: Write, merge: Merge, between: Callable[[int, int], list[Any]]) -> list[Any]:
    """The keys a MERGE's INSERT actions may write: their key expressions over the source."""
    info, params = w.info, w.params
    keys: list[Any] = []
    names = [column(f).lower() for f in info.pk_fields]
    for clause in merge.clauses:
        if clause.action != "insert" or clause.columns is None or clause.values is None:
            continue
        if not all(n in clause.columns for n in names):
            continue
        spans = [clause.values[clause.columns.index(n)] for n in names]
        exprs = ", ".join(merge.sql[a:b] for a, b in spans)
        args = params if isinstance(params, dict) else (
            [v for span in spans for v in between(*span)] + between(*merge.source)) or None
        found = w.rows.query(f"SELECT DISTINCT {exprs} FROM {merge.sql[slice(*merge.source)]}", args)
        keys += [info.pk_to_python(tuple(r)) for r in found if None not in r]
    return list(dict.fromkeys(keys))


def _row_versions(w: Write, keys: list[Any]) -> dict[Any, str]:
    """Each existing row's physical version (PostgreSQL's ``ctid``), which any UPDATE changes."""
    info = w.info
    width = len(info.pk_fields)
    return {info.pk_to_python(tuple(r[:width])): r[width]
            for r in w.rows.by_keys(info, keys, info.pk_fields, also="ctid::text")}


def _restrict_merge(w: Write, merge: Merge, keys: list[Any]) -> tuple[str, Any]:
    """Add ``AND <key> IN (<the locked keys>)`` to each WHEN MATCHED clause, so a row that begins
    to match after capture read them is left alone rather than written unseen."""
    info, params = w.info, w.params
    if not any(c.matched and c.action != "nothing" for c in merge.clauses):
        return merge.sql, params
    sql = merge.sql
    if params is None:  # capture gives it parameters: the driver then %-formats it
        sql = sql.replace("%", "%%")
        merge = analyse_merge(sql) or merge
    clauses = [c for c in merge.clauses if c.matched and c.action != "nothing"]
    prep = [v for k in keys for v in info.pk_db_values(k, w.connection)]
    col = w.rows.key_columns(info, merge.ref)
    named = isinstance(params, dict)
    plist: list[Any] = [] if named or params is None else list(params)
    new_params: dict[str, Any] = dict(params) if named else {}
    for n, clause in reversed(list(enumerate(clauses))):
        if named:
            names = [f"dbevents_pk_{n}_{i}" for i in range(len(prep))]
            new_params.update(zip(names, prep, strict=True))
            marks = key_list([f"%({x})s" for x in names], len(info.pk_fields))
        else:
            marks = key_list(["%s"] * len(prep), len(info.pk_fields))
            cut = merge.count_params_before(clause.then)
            plist[cut:cut] = prep
        cond = f"{col} IN ({marks})" if prep else "false"
        if clause.condition is not None:
            a, b = clause.condition
            sql = f"{sql[:a]} ({sql[a:b]}) AND {cond} {sql[b:]}"
        else:
            sql = f"{sql[:clause.then]}AND {cond} {sql[clause.then:]}"
    return sql, new_params if named else plist
