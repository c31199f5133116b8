"""Recognise the write statements dbevents captures, without a general SQL parser.

Every statement executed through a wrapped connection passes :func:`write_target` first; it is
an anchored regular expression on the first keyword and rejects SELECTs and everything else in
well under a microsecond. Only statements that write a *registered* table are then analysed
with :func:`analyse`, a scanner that finds the top-level clauses (``WHERE``, ``RETURNING``,
``ON CONFLICT`` ...) while skipping string literals, quoted identifiers, comments and
parentheses. sqlparse is not used: it costs about 0.5 ms a statement, refuses the large
statements ``bulk_create`` produces, and does not give the clause offsets capture needs to
restrict a statement.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from bisect import bisect_left
from dataclasses import dataclass

from dbevents.sql.shapes import CTE_PREFIX, MAIN_WRITE, UPDATE_HEAD, analyse_merge, joined_update, with_list
from dbevents.sql.tokens import (
    CACHED_SQL_LENGTH,
    IDENT,
    LEAD,
    QNAME,
    TOKEN_MYSQL,
    TOKEN_STD,
    dialect,
    find_placeholders,
    offset_of,
    unquote,
)

# The hot-path filter: is the first keyword one that writes?
_FIRST_WRITE = re.compile(LEAD + r"(?P<kw>insert|update|delete|replace|with|merge|truncate)\b", re.I | re.S)

_INSERT = re.compile(
    LEAD + r"(?P<kw>insert|replace)\s+(?:(?:or\s+\w+|ignore|low_priority|delayed|high_priority)\s+)*"
    rf"(?:into\s+)?{QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!values\b|select\b|default\b){IDENT}))?\s*(?=\(|values\b|select\b|default\b)",
    re.I | re.S,
)
_UPDATE = re.compile(
    LEAD + r"(?P<kw>update)\s+(?:(?:only|low_priority|ignore)\s+)*"
    rf"{QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!set\b){IDENT}))?\s+set\b",
    re.I | re.S,
)
_DELETE = re.compile(
    LEAD + r"(?P<kw>delete)\s+(?:(?:low_priority|quick|ignore)\s+)*from\s+(?:only\s+)?"
    rf"{QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!where\b|returning\b|order\b|limit\b|using\b){IDENT}))?\s*(?=where\b|returning\b|order\b|limit\b|using\b|;|--|/\*|#|\Z)",
    re.I | re.S,
)
# MySQL's multi-table form, which Django emits for deletes filtered through a join:
# DELETE `t` FROM `t` INNER JOIN ... WHERE ...
_DELETE_JOIN = re.compile(
    LEAD + rf"(?P<kw>delete)\s+{QNAME}\s+from\b",
    re.I | re.S,
)

_WRITES = re.compile(r"\b(?:insert|update|delete|merge)\b", re.I)


def _target(m: re.Match[str], sql: str) -> str:
    """The table a DELETE ... FROM join list deletes from: ``DELETE c FROM t AS c`` names the
    alias; find the table behind it in the join list."""
    name = m.group("table")
    if m.re is not _DELETE_JOIN or "." in name:
        return name
    wanted = unquote(name)
    # ``FROM|JOIN|, <table> [AS] <alias>`` in the join list (up to WHERE).
    entries = re.finditer(
        rf"(?:\bfrom|\bjoin|,)\s+(?P<t>{IDENT}(?:\s*\.\s*{IDENT})?)"
        rf"(?:\s+(?:as\s+)?(?P<a>(?!(?:inner|left|right|cross|join|on|where|using|natural|straight_join)\b){IDENT}))?",
        sql[m.end() - 4:], re.I,
    )
    for entry in entries:
        if entry.group("a") and unquote(entry.group("a")) == wanted:
            return entry.group("t")
    return name


def write_target(sql: str) -> tuple[str, str] | None:
    """Return ``(kind, normalised table)`` when ``sql`` writes a single table, else None.

    ``kind`` is ``"insert"``, ``"update"`` or ``"delete"``; ``"unsupported"`` is returned with
    an empty table for statements that write in ways dbevents cannot follow (CTEs, MERGE,
    TRUNCATE, multi-table UPDATE), so the caller can warn when they mention a registered table.
    Statements that do not write return None after one anchored regex match.
    """
    first = _FIRST_WRITE.match(sql)
    if first is None:
        return None
    kw = first.group("kw").lower()
    if len(sql) <= CACHED_SQL_LENGTH:
        return _cached_target(sql, kw)
    return _classify(sql, kw)


@functools.lru_cache(maxsize=512)
def _cached_target(sql: str, kw: str) -> tuple[str, str] | None:
    return _classify(sql, kw)


def _classify(sql: str, kw: str) -> tuple[str, str] | None:
    """:func:`write_target` after its first keyword ``kw`` was found."""
    if kw in ("insert", "replace"):
        m = _INSERT.match(sql)
        kind = "insert"
    elif kw == "update":
        m = _UPDATE.match(sql)
        kind = "update"
        if m is None:
            joined = joined_update(sql)
            if joined is None:
                return ("unsupported", "")
            # One table written: the UPDATE of that table; several: one write per table.
            return ("update", unquote(joined[0][0][0])) if len(joined[0]) == 1 else ("compound", "")
    elif kw == "delete":
        m = _DELETE.match(sql) or _DELETE_JOIN.match(sql)
        kind = "delete"
    elif kw == "merge":
        merge = analyse_merge(sql)
        return ("merge", merge.table) if merge is not None else ("unsupported", "")
    elif kw == "with":
        ctes = with_list(sql, TOKEN_STD)
        if ctes is None:
            return ("unsupported", "") if _WRITES.search(sql) else None
        if any(c.writes for c in ctes.ctes):
            return ("compound", "")  # a data-modifying CTE: several writes in one statement
        masked = " " * ctes.main + sql[ctes.main:]
        first = _FIRST_WRITE.match(masked)
        if first is None:
            return None  # a read that starts with a CTE
        # Read-only CTEs before an INSERT/UPDATE/DELETE: the main statement.
        return _classify(masked, first.group("kw").lower())
    else:
        return ("unsupported", "")
    if m is None:
        return ("unsupported", "")
    return (kind, unquote(_target(m, sql)))


@dataclass(frozen=True)
class Statement:
    """The parts of one write statement that capture needs.

    Offsets index into ``sql``; a clause that is absent has ``None``. ``where`` spans the
    WHERE condition without the keyword; ``where_end`` is where the condition stops (the next
    top-level ORDER BY / LIMIT / RETURNING, or the end of the statement). Read-only: one
    instance is shared by every execution of the same SQL text (see :func:`analyse`).
    """

    sql: str
    kind: str                      # insert | update | delete
    keyword: str                   # as written: INSERT, REPLACE, UPDATE, DELETE
    ref: str                       # how the statement names the target in column references
    multi_table_delete: bool
    source: str                    # the target as a FROM clause (table [alias], or DELETE's join list)
    from_start: int | None         # DELETE: start of the FROM clause's table list
    set_start: int | None          # UPDATE: after SET
    where: tuple[int, int] | None
    where_end: int                 # insertion point for an extra condition
    returning: tuple[int, int] | None   # span of the RETURNING column list
    returning_at: int | None       # where the RETURNING keyword starts
    upsert: bool                   # ON CONFLICT ... DO UPDATE / ON DUPLICATE KEY UPDATE
    ignore: bool                   # INSERT IGNORE / OR IGNORE / ON CONFLICT DO NOTHING
    replace: bool                  # REPLACE / INSERT OR REPLACE: deletes the rows it conflicts with
    columns: list[str] | None      # INSERT column list, normalised
    values_start: int | None       # INSERT ... VALUES: offset just after VALUES
    end: int                       # end of the statement without a trailing ';' and spaces
    placeholders: list[tuple[int, str | None]]  # (offset, name or None) of each top-level-or-not %s
    prefix_end: int = 0            # after a leading WITH list: where the statement starts
    with_end: int = 0              # sql[:with_end]: the leading read-only CTEs, for capture's own SELECT
    join_list: tuple[int, int] | None = None  # PostgreSQL's UPDATE ... FROM / DELETE ... USING <join list>
    select_start: int | None = None  # INSERT ... SELECT: where the query starts

    def count_params_before(self, offset: int) -> int:
        """How many placeholders stand before ``offset`` (SET params precede WHERE params)."""
        # Placeholders are listed in text order: a binary search, not a scan of a bulk
        # statement's tens of thousands.
        return bisect_left(self.placeholders, offset, key=offset_of)


def analyse(sql: str, vendor: str) -> Statement | None:
    """Scan a statement that :func:`write_target` accepted. Return None when it has a shape
    capture cannot follow (several statements in one string, for instance).

    The result is cached by SQL text (for statements up to a few KiB) and must not be changed.
    """
    if len(sql) <= CACHED_SQL_LENGTH:
        return _cached_analyse(sql, vendor)
    return analyse_uncached(sql, vendor)


@functools.lru_cache(maxsize=512)
def _cached_analyse(sql: str, vendor: str) -> Statement | None:
    return analyse_uncached(sql, vendor)


def joined_update_statement(sql: str, which: int = 0) -> Statement | None:
    """The Statement of a multi-table UPDATE's write to its ``which``-th table (SET order);
    None when it is no such UPDATE."""
    joined = joined_update(sql)
    if joined is None or which >= len(joined[0]):
        return None
    tables, join_start, set_at, set_start, where_start = joined
    _table, ref = tables[which]
    end = len(sql.rstrip().rstrip(";").rstrip())
    placeholders = find_placeholders(TOKEN_MYSQL, sql, 0, len(sql))
    return Statement(
        sql=sql, kind="update", keyword="UPDATE", ref=ref, multi_table_delete=False,
        source=sql[join_start:set_at].strip(), from_start=join_start, set_start=set_start,
        where=(where_start, end) if where_start is not None else None, where_end=end, returning=None,
        returning_at=None, upsert=False, ignore=False, replace=False, columns=None, values_start=None, end=end,
        placeholders=placeholders,
    )


def analyse_uncached(sql: str, vendor: str) -> Statement | None:
    sql_dialect = dialect(vendor)
    if sql_dialect.joined_update and UPDATE_HEAD.match(sql) and not _UPDATE.match(sql):
        joined = joined_update(sql)
        return joined_update_statement(sql) if joined and len(joined[0]) == 1 else None
    if CTE_PREFIX.match(sql):
        # The main statement after a WITH list (whose queries may write: see compound_writes).
        token_re = sql_dialect.tokens
        ctes = with_list(sql, token_re)
        if ctes is None or not MAIN_WRITE.match(sql, ctes.main):
            return None
        inner = analyse_uncached(" " * ctes.main + sql[ctes.main:], vendor)
        if inner is None:
            return None
        return dataclasses.replace(inner, sql=sql, placeholders=find_placeholders(token_re, sql, 0, ctes.main)
                                   + inner.placeholders, prefix_end=ctes.main, with_end=ctes.read_only_end())
    head = _INSERT.match(sql) or _UPDATE.match(sql) or _DELETE.match(sql) or _DELETE_JOIN.match(sql)
    if head is None:
        return None
    keyword = head.group("kw")
    kind = {"insert": "insert", "replace": "insert", "update": "update", "delete": "delete"}[keyword.lower()]
    multi = head.re is _DELETE_JOIN
    alias = head.groupdict().get("alias")
    ref = alias or head.group("table")

    token_re = sql_dialect.tokens
    depth = 0
    top: list[tuple[str, int, int]] = []  # (keyword, start, end) at depth 0
    placeholders: list[tuple[int, str | None]] = []
    first_paren: tuple[int, int] | None = None
    paren_open = -1
    end = len(sql.rstrip())
    comments: list[tuple[int, int]] = []
    for tok in token_re.finditer(sql, head.end()):
        text = tok.group(0)
        if text[:2] in ("--", "/*") or text[:1] == "#":
            comments.append((tok.start(), tok.end()))
            continue
        if text == "(":
            if depth == 0:
                paren_open = tok.start()
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0 and first_paren is None and paren_open >= 0:
                first_paren = (paren_open, tok.end())
        elif text == ";":
            if depth == 0:
                if not sql_dialect.only_comments.match(sql, tok.end()):
                    return None  # several statements in one string
                end = tok.start()
                break
        elif text == "%s":
            placeholders.append((tok.start(), None))
        elif tok.group("name"):
            placeholders.append((tok.start(), tok.group("name")))
        elif tok.group("kw") and depth == 0:
            top.append((tok.group("kw").lower(), tok.start(), tok.end()))

    # Clauses appended at the end must not land inside a trailing comment.
    while comments and not sql[comments[-1][1]:end].strip():
        end = comments.pop()[0]
        end = len(sql[:end].rstrip())

    def first(word: str, after: int = 0) -> tuple[str, int, int] | None:
        for item in top:
            if item[0] == word and item[1] >= after:
                return item
        return None

    if kind == "delete" and not multi and sql_dialect.delete_using_joins and first("using"):
        return None  # MySQL's DELETE FROM t USING <join list>: a multi-table form not followed
    returning = None
    ret = first("returning")
    if ret is not None:
        returning = (ret[2], end)
    returning_at = ret[1] if ret is not None else None
    tails = [i[1] for i in top if i[0] in ("order", "limit", "returning")]
    where = None
    where_end = min([*tails, end])
    w = first("where") if kind != "insert" else None
    if w is not None:
        where_end = min([t for t in tails if t > w[2]] + [end])
        where = (w[2], where_end)
    join_list = None
    if kind == "update":
        source = sql[head.start("table"):head.end()].rstrip()[:-3].rstrip()
        f = first("from")  # PostgreSQL's UPDATE t SET ... FROM <join list> WHERE ...
        if f is not None and (w is None or f[1] < w[1]):
            join_list = (f[2], w[1] if w else where_end)
            source = f"{source}, {sql[join_list[0]:join_list[1]].strip()}"
    elif multi:
        source = sql[head.end():w[1] if w else where_end].strip()
    else:
        source = sql[head.start("table"):head.end()].strip()
        u = first("using") if kind == "delete" else None  # PostgreSQL's DELETE FROM t USING <join list>
        if u is not None:
            join_list = (u[2], w[1] if w else where_end)
            source = f"{source}, {sql[join_list[0]:join_list[1]].strip()}"
    set_start = head.end() if kind == "update" else None
    from_start = (head.end() if multi else head.start("table")) if kind == "delete" else None
    upsert = ignore = replace = False
    columns = None
    values_start = select_start = None
    if kind == "insert":
        words = [i[0] for i in top]
        if "duplicate" in words:
            upsert = True
        elif "conflict" in words:
            do = first("do")
            rest = sql[do[2]:do[2] + 20].lstrip().lower() if do else ""
            upsert = rest.startswith("update")
            ignore = rest.startswith("nothing")
        prefix = sql[head.start("kw"):head.start("table")].lower()
        ignore = ignore or "ignore" in prefix
        replace = keyword.lower() == "replace" or "replace" in prefix
        if first_paren is not None and (head.end() <= first_paren[0] <= head.end() + 2):
            columns = [unquote(c.strip()) for c in sql[first_paren[0] + 1:first_paren[1] - 1].split(",")]
        v = first("values")
        if v is not None:
            values_start = v[2]
        else:
            sel = first("select")  # INSERT ... SELECT: where its query starts
            select_start = sel[1] if sel is not None else None
    return Statement(
        sql=sql, kind=kind, keyword=keyword, ref=ref,
        multi_table_delete=multi, source=source, from_start=from_start, set_start=set_start, where=where,
        where_end=where_end, returning=returning, returning_at=returning_at, upsert=upsert, ignore=ignore, replace=replace, columns=columns,
        values_start=values_start, end=end, placeholders=placeholders, join_list=join_list,
        select_start=select_start,
    )


