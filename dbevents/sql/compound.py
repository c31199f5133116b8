"""Statements that write several tables: the writes of a WITH list that writes (PostgreSQL) and
of a multi-table UPDATE (MySQL), each as a Statement into the whole text."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from dbevents.sql.shapes import CTE, MAIN_WRITE, UPDATE_HEAD, joined_update, with_list
from dbevents.sql.statement import Statement, analyse_uncached, joined_update_statement, write_target
from dbevents.sql.tokens import CACHED_SQL_LENGTH, dialect, find_placeholders, table_names, unquote


@dataclass(frozen=True)
class Part:
    """One write of a statement that holds several: the query of a data-modifying CTE, or the
    main statement after them."""

    table: str                # normalised target; "" when the scanner cannot tell
    text: str                 # the part's own text, for log lines
    stmt: Statement | None    # offsets into the whole statement; None: a shape capture cannot follow
    cte: CTE | None           # the CTE whose query it is
    # It names no CTE beyond the leading read-only ones, so capture's SELECT of the rows it is
    # about to write can run before it (with ``sql[:stmt.with_end]`` in front).
    self_contained: bool
    # Its rows are read before the statement runs (a CTE's write, one table of a multi-table
    # UPDATE); else it is the main statement after the CTEs, which takes the RETURNING path.
    before: bool = True


def compound_writes(sql: str, vendor: str) -> list[Part] | None:
    """The writes of a statement that writes several tables: one whose WITH list holds
    INSERT/UPDATE/DELETE queries (PostgreSQL), CTEs first, in text order; a multi-table UPDATE
    (MySQL), one per table. None when the statement cannot be followed."""
    if len(sql) <= CACHED_SQL_LENGTH:
        return _cached_compound(sql, vendor)
    return _compound(sql, vendor)


@functools.lru_cache(maxsize=128)
def _cached_compound(sql: str, vendor: str) -> list[Part] | None:
    return _compound(sql, vendor)


def _compound(sql: str, vendor: str) -> list[Part] | None:
    sql_dialect = dialect(vendor)
    joined = joined_update(sql) if UPDATE_HEAD.match(sql) else None
    if joined is not None:
        return [Part(unquote(table), sql, joined_update_statement(sql, i) if sql_dialect.joined_update else None,
                     None, True) for i, (table, _ref) in enumerate(joined[0])]
    token_re = sql_dialect.tokens
    ctes = with_list(sql, token_re)
    if ctes is None:
        return None
    run_end = ctes.read_only_end()
    later = {c.name for c in ctes.ctes if c.end >= run_end}
    every = find_placeholders(token_re, sql, 0, len(sql))
    parts = []
    for cte in ctes.ctes:
        if not cte.writes:
            continue
        body = sql[cte.start:cte.end]
        target = write_target(body)
        table = target[1] if target is not None else ""
        stmt = None
        if table:
            masked = " " * cte.start + body + " " * (len(sql) - cte.end)
            stmt = analyse_uncached(masked, vendor)
            if stmt is not None:
                stmt = dataclasses.replace(stmt, sql=sql, placeholders=every, with_end=run_end)
        parts.append(Part(table, body, stmt, cte, not (table_names(body) & later)))
    if MAIN_WRITE.match(sql, ctes.main):
        text = sql[ctes.main:]
        target = write_target(" " * ctes.main + text)
        table = target[1] if target is not None else ""
        stmt = analyse_uncached(sql, vendor) if table else None
        parts.append(Part(table, text, stmt, None, not (table_names(text) & later), before=False))
    return parts


