"""Recognise the write statements dbevents captures, without a general SQL parser.

Every statement executed through a wrapped connection passes :func:`write_target` first; it is
an anchored regular expression on the first keyword and rejects SELECTs and everything else in
well under a microsecond. Only statements that write a *registered* table are then analysed
with :func:`analyse`, a scanner that finds the top-level clauses (``WHERE``, ``RETURNING``,
``ON CONFLICT`` ...) while skipping string literals, quoted identifiers, comments and
parentheses. sqlparse is not used: it costs about 0.5 ms a statement and refuses the large
statements ``bulk_create`` produces.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_IDENT = r'(?:"(?:[^"]|"")+"|`(?:[^`]|``)+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
_QNAME = rf"(?P<table>{_IDENT}(?:\s*\.\s*{_IDENT})?)"
_LEAD = r"\A\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|\Z))\s*)*"

# The hot-path filter: is the first keyword one that writes?
_FIRST_WRITE = re.compile(_LEAD + r"(?P<kw>insert|update|delete|replace|with|merge|truncate)\b", re.I | re.S)

_INSERT = re.compile(
    _LEAD + r"(?P<kw>insert|replace)\s+(?:(?:or\s+\w+|ignore|low_priority|delayed|high_priority)\s+)*"
    rf"(?:into\s+)?{_QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!values\b|select\b|default\b){_IDENT}))?\s*(?=\(|values\b|select\b|default\b)",
    re.I | re.S,
)
_UPDATE = re.compile(
    _LEAD + r"(?P<kw>update)\s+(?:(?:only|low_priority|ignore)\s+)*"
    rf"{_QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!set\b){_IDENT}))?\s+set\b",
    re.I | re.S,
)
_DELETE = re.compile(
    _LEAD + r"(?P<kw>delete)\s+(?:(?:low_priority|quick|ignore)\s+)*from\s+(?:only\s+)?"
    rf"{_QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!where\b|returning\b|order\b|limit\b|using\b){_IDENT}))?\s*(?=where\b|returning\b|order\b|limit\b|using\b|;|--|/\*|#|\Z)",
    re.I | re.S,
)
# MySQL's multi-table form, which Django emits for deletes filtered through a join:
# DELETE `t` FROM `t` INNER JOIN ... WHERE ...
_DELETE_JOIN = re.compile(
    _LEAD + rf"(?P<kw>delete)\s+{_QNAME}\s+from\b",
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
        rf"(?:\bfrom|\bjoin|,)\s+(?P<t>{_IDENT}(?:\s*\.\s*{_IDENT})?)"
        rf"(?:\s+(?:as\s+)?(?P<a>(?!(?:inner|left|right|cross|join|on|where|using|natural|straight_join)\b){_IDENT}))?",
        sql[m.end() - 4:], re.I,
    )
    for entry in entries:
        if entry.group("a") and unquote(entry.group("a")) == wanted:
            return entry.group("t")
    return name


_KEYWORDS = (
    "where", "returning", "order", "limit", "on", "set", "values", "select", "from",
    "conflict", "duplicate", "do", "group", "having", "window", "union", "for", "using",
)
_TOKEN_STD = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|--[^\n]*|/\*.*?\*/|[();]|%%|%s|%\((?P<name>\w+)\)s"
    r"|\b(?P<kw>" + "|".join(_KEYWORDS) + r")\b",
    re.I | re.S,
)
# PostgreSQL also has dollar-quoted strings ($$...$$, $tag$...$tag$) and escape strings (E'it\'s').
_TOKEN_PG = re.compile(
    r"\$(?P<dq>(?:[A-Za-z_][A-Za-z_0-9]*)?)\$.*?\$(?P=dq)\$|(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'"
    r"|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|[();]|%%|%s|%\((?P<name>\w+)\)s"
    r"|\b(?P<kw>" + "|".join(_KEYWORDS) + r")\b",
    re.I | re.S,
)
# MySQL also ends a string at an unescaped quote only: 'it\'s'.
_TOKEN_MYSQL = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`(?:[^`]|``)*`|--(?=\s|$)[^\n]*|#[^\n]*|/\*.*?\*/|[();]|%%|%s|%\((?P<name>\w+)\)s"
    r"|\b(?P<kw>" + "|".join(_KEYWORDS) + r")\b",
    re.I | re.S,
)


_TOKENS = {"mysql": _TOKEN_MYSQL, "postgresql": _TOKEN_PG}

# What may follow a statement's closing semicolon: whitespace and comments.
_ONLY_COMMENTS = {
    False: re.compile(r"\s*(?:(?:--[^\n]*|/\*.*?\*/)\s*)*\Z", re.S),
    True: re.compile(r"\s*(?:(?:--(?=\s|$)[^\n]*|#[^\n]*|/\*.*?\*/)\s*)*\Z", re.S),
}


# Django writes the same SQL text for every save() of a model, every get() ...: the results of
# recognising a statement are cached by its text. Only statements up to this length are cached
# (a bulk_create's is megabytes long and seldom repeats).
_CACHED_SQL_LENGTH = 4096


@functools.lru_cache(maxsize=1024)
def unquote(name: str) -> str:
    """Normalise an identifier as written in SQL to the registry's key form.

    Quotes are removed (``"a""b"`` -> ``a"b``), each part of a qualified name is kept, and the
    result is lower-cased: table names that differ only by case are not supported.
    """
    parts = re.findall(_IDENT, name)
    out = []
    for part in parts:
        if part[0] == '"':
            part = part[1:-1].replace('""', '"')
        elif part[0] == "`":
            part = part[1:-1].replace("``", "`")
        elif part[0] == "[":
            part = part[1:-1]
        out.append(part.lower())
    return ".".join(out)


def split_qualified(name: str) -> list[str]:
    """The parts of a possibly qualified identifier, quotes kept: ``"a"."b"`` -> ``['"a"', '"b"']``."""
    return list(_split_qualified(name))


@functools.lru_cache(maxsize=1024)
def _split_qualified(name: str) -> tuple[str, ...]:
    return tuple(re.findall(_IDENT, name))


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
    if len(sql) <= _CACHED_SQL_LENGTH:
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
            joined = _joined_update(sql)
            return ("update", unquote(joined[0])) if joined else ("unsupported", "")
    elif kw == "delete":
        m = _DELETE.match(sql) or _DELETE_JOIN.match(sql)
        kind = "delete"
    elif kw == "with":
        main = cte_prefix_end(sql)
        if main is not None:  # read-only CTEs before an INSERT/UPDATE/DELETE: the main statement
            masked = " " * main + sql[main:]
            first = _FIRST_WRITE.match(masked)
            return _classify(masked, first.group("kw").lower()) if first else None
        if not _WRITES.search(sql):
            return None  # a read that starts with a CTE
        return ("unsupported", "")
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
    table: str                     # normalised key
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
    prefix_end: int = 0            # after a leading read-only WITH list: where the statement starts

    def count_params_before(self, offset: int) -> int:
        """How many placeholders stand before ``offset`` (SET params precede WHERE params)."""
        # Placeholders are listed in text order: a binary search, not a scan of a bulk
        # statement's tens of thousands.
        return bisect_left(self.placeholders, offset, key=_offset)


def _offset(placeholder: tuple[int, str | None]) -> int:
    return placeholder[0]


def analyse(sql: str, vendor: str) -> Statement | None:
    """Scan a statement that :func:`write_target` accepted. Return None when it has a shape
    capture cannot follow (several statements in one string, for instance).

    The result is cached by SQL text (for statements up to a few KiB) and must not be changed.
    """
    if len(sql) <= _CACHED_SQL_LENGTH:
        return _cached_analyse(sql, vendor)
    return _analyse(sql, vendor)


@functools.lru_cache(maxsize=512)
def _cached_analyse(sql: str, vendor: str) -> Statement | None:
    return _analyse(sql, vendor)


_CTE_PREFIX = re.compile(_LEAD + r"with\s+(?:recursive\s+)?", re.I | re.S)
_AFTER_CTE = re.compile(r"\s*(?P<next>,|as\b|not\b|materialized\b|insert\b|update\b|delete\b|replace\b)", re.I)


def _depth_tokens(token_re: re.Pattern[str], sql: str, start: int = 0) -> Iterator[tuple[re.Match[str], int]]:
    """Each token from ``start`` with the parenthesis depth after it (a ``)`` that closes a
    top-level group comes with 0)."""
    depth = 0
    for tok in token_re.finditer(sql, start):
        text = tok.group(0)
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        yield tok, depth


def cte_prefix_end(sql: str) -> int | None:
    """Where the main statement starts after a leading ``WITH`` list whose queries only read
    (``WITH p AS (SELECT ...) DELETE FROM t WHERE ...``), when it is an INSERT, UPDATE or
    DELETE; None for anything else (a data-modifying CTE, a main SELECT)."""
    m = _CTE_PREFIX.match(sql)
    if m is None:
        return None
    for tok, depth in _depth_tokens(_TOKEN_STD, sql, m.end()):
        if tok.group(0) == ")" and depth == 0:
            after = _AFTER_CTE.match(sql, tok.end())
            if after is None:
                return None
            if after.group("next").lower() in ("insert", "update", "delete", "replace"):
                main = after.start("next")
                return None if _WRITES.search(sql, m.end(), main) else main
    return None


_UPDATE_HEAD = re.compile(_LEAD + r"(?P<kw>update)\s+(?:(?:low_priority|ignore)\s+)*", re.I | re.S)
_JOIN_ENTRY = re.compile(
    rf"(?:,|\bjoin\b)\s*(?P<t>{_IDENT}(?:\s*\.\s*{_IDENT})?)"
    rf"(?:\s+(?:as\s+)?(?P<a>(?!(?:inner|left|right|cross|join|on|using|natural|straight_join|set)\b){_IDENT}))?",
    re.I,
)
_ASSIGNED = re.compile(rf"\s*(?P<q>{_IDENT})\s*\.\s*{_IDENT}\s*=", re.S)


def _joined_update(sql: str) -> tuple[str, str, int, int, int, int | None] | None:
    """MySQL's multi-table UPDATE (``UPDATE t JOIN u ON ... SET t.a = ... WHERE ...``) when its
    SET writes columns of one table only: ``(table, its reference, join list start, SET
    keyword start, SET list start, WHERE condition start or None)``."""
    head = _UPDATE_HEAD.match(sql)
    if head is None:
        return None
    set_kw, where_kw = None, None
    commas: list[int] = []
    for tok, depth in _depth_tokens(_TOKEN_MYSQL, sql, head.end()):
        text = tok.group(0)
        if depth == 0 and tok.group("kw"):
            word = tok.group("kw").lower()
            if word == "set" and set_kw is None:
                set_kw = tok
            elif word == "where" and set_kw is not None:
                where_kw = tok
                break
            elif word in ("order", "limit", "returning") and set_kw is not None:
                return None
        elif text == ";":
            return None
    if set_kw is None:
        return None
    stop = where_kw.start() if where_kw else len(sql)
    # Top-level commas of the SET list, outside literals, comments and parentheses.
    region = list(sql[set_kw.end():stop])
    for tok in _TOKEN_MYSQL.finditer(sql, set_kw.end(), stop):
        if tok.group(0)[:1] in ("'", '"', "`", "-", "#", "/"):
            region[tok.start() - set_kw.end():tok.end() - set_kw.end()] = " " * (tok.end() - tok.start())
    level = 0
    for i, ch in enumerate(region):
        level += (ch == "(") - (ch == ")")
        if ch == "," and level == 0:
            commas.append(set_kw.end() + i)
    refs: dict[str, str] = {}
    for entry in _JOIN_ENTRY.finditer("," + sql[head.end():set_kw.start()]):
        table = entry.group("t")
        refs[unquote(entry.group("a") or table.split(".")[-1])] = table
    bounds = [set_kw.end(), *[c + 1 for c in commas], stop]
    written = set()
    for a, b in zip(bounds, bounds[1:], strict=False):
        m = _ASSIGNED.match(sql, a, b)
        if m is None:
            return None  # an unqualified column: which table it belongs to is the server's call
        written.add(m.group("q"))
    tables = {unquote(q): refs.get(unquote(q)) for q in written}
    if len(tables) != 1 or None in tables.values():
        return None
    ((ref_key, found),) = tables.items()
    table = str(found)
    ref = next(q for q in written if unquote(q) == ref_key)
    return (table, ref, head.end(), set_kw.start(), set_kw.end(), where_kw.end() if where_kw else None)


def _joined_update_statement(sql: str) -> Statement | None:
    joined = _joined_update(sql)
    if joined is None:
        return None
    table, ref, join_start, set_at, set_start, where_start = joined
    end = len(sql.rstrip().rstrip(";").rstrip())
    placeholders = [(t.start(), t.group("name")) for t in _TOKEN_MYSQL.finditer(sql)
                    if t.group(0) == "%s" or t.group("name")]
    return Statement(
        sql=sql, kind="update", keyword="UPDATE", table=unquote(table), ref=ref, multi_table_delete=False,
        source=sql[join_start:set_at].strip(), from_start=join_start, set_start=set_start,
        where=(where_start, end) if where_start is not None else None, where_end=end, returning=None,
        returning_at=None, upsert=False, ignore=False, replace=False, columns=None, values_start=None, end=end,
        placeholders=placeholders,
    )


def _analyse(sql: str, vendor: str) -> Statement | None:
    if vendor == "mysql" and _UPDATE_HEAD.match(sql) and not _UPDATE.match(sql):
        return _joined_update_statement(sql)
    if _CTE_PREFIX.match(sql):
        main = cte_prefix_end(sql)
        if main is None:
            return None
        inner = _analyse(" " * main + sql[main:], vendor)
        if inner is None:
            return None
        token_re = _TOKENS.get(vendor, _TOKEN_STD)
        before = [(t.start(), t.group("name")) for t in token_re.finditer(sql, 0, main)
                  if t.group(0) == "%s" or t.group("name")]
        return dataclasses.replace(inner, sql=sql, placeholders=before + inner.placeholders, prefix_end=main)
    head = _INSERT.match(sql) or _UPDATE.match(sql) or _DELETE.match(sql) or _DELETE_JOIN.match(sql)
    if head is None:
        return None
    keyword = head.group("kw")
    kind = {"insert": "insert", "replace": "insert", "update": "update", "delete": "delete"}[keyword.lower()]
    multi = head.re is _DELETE_JOIN
    alias = head.groupdict().get("alias")
    ref = alias or head.group("table")
    table = _target(head, sql)

    token_re = _TOKENS.get(vendor, _TOKEN_STD)
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
                if not _ONLY_COMMENTS[vendor == "mysql"].match(sql, tok.end()):
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

    if kind == "delete" and not multi and vendor == "mysql" and first("using"):
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
    if kind == "update":
        source = sql[head.start("table"):head.end()].rstrip()[:-3].rstrip()
    elif multi:
        source = sql[head.end():w[1] if w else where_end].strip()
    else:
        source = sql[head.start("table"):head.end()].strip()
    set_start = head.end() if kind == "update" else None
    from_start = (head.end() if multi else head.start("table")) if kind == "delete" else None
    upsert = ignore = replace = False
    columns = None
    values_start = None
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
    return Statement(
        sql=sql, kind=kind, keyword=keyword, table=unquote(table), ref=ref,
        multi_table_delete=multi, source=source, from_start=from_start, set_start=set_start, where=where,
        where_end=where_end, returning=returning, returning_at=returning_at, upsert=upsert, ignore=ignore, replace=replace, columns=columns,
        values_start=values_start, end=end, placeholders=placeholders,
    )


_PK_ONLY_CACHE: dict[str, re.Pattern[str]] = {}


def pk_only_where(stmt: Statement, pk_column: str) -> bool:
    """True when the WHERE clause is exactly ``pk = %s`` or ``pk IN (%s, ...)``.

    That is the shape of ``Model.save()`` updates, ``bulk_update``, and Django's batched and
    fast deletes; the affected keys are then the statement's own parameters.
    """
    if stmt.where is None:
        return False
    pattern = _PK_ONLY_CACHE.get(pk_column)
    if pattern is None:
        col = rf'(?:{_IDENT}\s*\.\s*)?(?:"{re.escape(pk_column)}"|`{re.escape(pk_column)}`|{re.escape(pk_column)})'
        pattern = re.compile(
            rf"\s*\(?\s*{col}\s*(?:=\s*%s|IN\s*\(\s*%s(?:\s*,\s*%s)*\s*\))\s*\)?\s*\Z", re.I
        )
        _PK_ONLY_CACHE[pk_column] = pattern
    return pattern.match(stmt.sql, stmt.where[0], stmt.where[1]) is not None


def params_between(stmt: Statement, params: Any, start: int, end: int) -> Any:
    """The parameters whose placeholders stand between two offsets (a dict is passed whole)."""
    if isinstance(params, dict) or params is None:
        return params
    first = stmt.count_params_before(start)
    last = stmt.count_params_before(end)
    return list(params)[first:last]


def values_rows(stmt: Statement, params: Any) -> list[list[Any]] | None:
    """Row-major parameters of ``INSERT ... VALUES (%s, ...), (...)`` when every value is a
    plain placeholder; None for other shapes (DEFAULT, expressions, SELECT, UNNEST)."""
    if stmt.values_start is None or stmt.columns is None or not isinstance(params, (list, tuple, type(None))):
        return None
    stop = stmt.returning_at if stmt.returning_at is not None else stmt.end
    body = stmt.sql[stmt.values_start:stop]
    on = re.search(r"\)\s*(?:on\s+(?:conflict|duplicate)|as\s+\w+\s+on\b)", body, re.I)
    if on:
        body = body[: on.start() + 1]
    ncol = len(stmt.columns)
    row = r"\(\s*%s(?:\s*,\s*%s){" + str(ncol - 1) + r"}\s*\)"
    if re.fullmatch(rf"\s*{row}(?:\s*,\s*{row})*\s*", body):
        values = list(params or ())
        if len(values) % ncol:
            return None
        return [values[i:i + ncol] for i in range(0, len(values), ncol)]
    return _literal_rows(body, ncol, params)


_VALUE = r"(?:%s|'(?:[^'\\]|\\.|'')*'|[-+]?\d+(?:\.\d+)?|null|true|false)"
_LITERAL_ROW = re.compile(rf"\s*,?\s*\(\s*({_VALUE}(?:\s*,\s*{_VALUE})*)\s*\)", re.I)
_LITERAL = re.compile(_VALUE, re.I)


def _literal_rows(body: str, ncol: int, params: Any) -> list[list[Any]] | None:
    """``VALUES (1, 'a'), (%s, %s)``: rows of plain literals and placeholders, as values."""
    rows: list[list[Any]] = []
    given = iter(params or ())
    pos = 0
    for m in _LITERAL_ROW.finditer(body):
        if m.start() != pos:
            return None
        pos = m.end()
        row: list[Any] = []
        for v in _LITERAL.finditer(m.group(1)):
            text = v.group(0)
            low = text.lower()
            if text == "%s":
                row.append(next(given, None))
            elif text[0] == "'":
                row.append(text[1:-1].replace("''", "'"))
            elif low in ("null", "true", "false"):
                row.append({"null": None, "true": True, "false": False}[low])
            else:
                row.append(float(text) if "." in text else int(text))
        if len(row) != ncol:
            return None
        rows.append(row)
    return rows if rows and not body[pos:].strip() else None


def split_statements(sql: str, vendor: str) -> list[str] | None:
    """The statements of a string that holds several (``UPDATE ...; DELETE ...``), split at
    top-level semicolons outside literals and comments; None when it holds one statement
    (a trailing semicolon and comments after it do not make a second)."""
    token_re = _TOKENS.get(vendor, _TOKEN_STD)
    parts: list[str] = []
    start = 0
    for tok, depth in _depth_tokens(token_re, sql):
        if tok.group(0) == ";" and depth <= 0:
            parts.append(sql[start:tok.start()])
            start = tok.end()
            if _ONLY_COMMENTS[vendor == "mysql"].match(sql, start):
                break
    else:
        parts.append(sql[start:])
    parts = [p for p in parts if not _ONLY_COMMENTS[vendor == "mysql"].match(p)]
    return parts if len(parts) > 1 else None


_NAME = re.compile(rf"{_IDENT}(?:\s*\.\s*{_IDENT})?")
_LITERALS = re.compile(r"'(?:[^'\\]|\\.|'')*'|--[^\n]*|/\*.*?\*/", re.S)


def table_names(sql: str) -> set[str]:
    """Every identifier (qualified or not) a statement contains outside string literals and
    comments, normalised as :func:`unquote` does: the candidates for the tables it names."""
    names: set[str] = set()
    for m in _NAME.finditer(_LITERALS.sub(" ", sql)):
        key = unquote(m.group(0))
        names.add(key)
        if "." in key:
            names.add(key.rsplit(".", 1)[1])
    return names
