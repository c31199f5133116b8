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
_GAP = r"\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|\Z))\s*)*"  # spaces and comments
_LEAD = r"\A" + _GAP

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
        ctes = with_list(sql, _TOKEN_STD)
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
    prefix_end: int = 0            # after a leading WITH list: where the statement starts
    with_end: int = 0              # sql[:with_end]: the leading read-only CTEs, for capture's own SELECT
    join_list: tuple[int, int] | None = None  # PostgreSQL's UPDATE ... FROM / DELETE ... USING <join list>
    select_start: int | None = None  # INSERT ... SELECT: where the query starts

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
# One entry of a WITH list up to its query's opening parenthesis: name [(columns)] AS [NOT] [MATERIALIZED] (
_CTE_HEAD = re.compile(
    rf"\s*(?P<name>{_IDENT})\s*(?:\([^()]*\)\s*)?as\s+(?:(?:not\s+)?materialized\s+)?\(", re.I | re.S,
)
_BODY_WRITE = re.compile(_GAP + r"(?:insert|update|delete|merge)\b", re.I | re.S)
_MAIN_WRITE = re.compile(r"(?:insert|update|delete|replace)\b", re.I)
_NEXT_CTE = re.compile(_GAP + ",", re.S)
_MAIN_AFTER_CTES = re.compile(_GAP + r"(?P<kw>select|insert|update|delete|replace|values|table|merge)\b", re.I | re.S)


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


@dataclass(frozen=True)
class CTE:
    """One query of a WITH list: ``sql[start:end]`` is its body (inside the parentheses)."""

    name: str      # normalised
    start: int
    end: int
    writes: bool   # INSERT/UPDATE/DELETE: a data-modifying CTE (PostgreSQL)


@dataclass(frozen=True)
class WithList:
    """A statement's leading WITH list and where the main statement starts."""

    ctes: tuple[CTE, ...]
    main: int

    def read_only_end(self) -> int:
        """Where the leading run of read-only CTEs ends (after its last ``)``); 0 when the
        first CTE writes. ``sql[:read_only_end()]`` is a WITH list a SELECT may follow."""
        end = 0
        for cte in self.ctes:
            if cte.writes:
                break
            end = cte.end + 1
        return end


def with_list(sql: str, token_re: re.Pattern[str]) -> WithList | None:
    """The CTEs of a statement that starts with ``WITH``; None when it does not, or when its
    list has a shape this scanner does not follow (``SEARCH``/``CYCLE`` clauses, ...)."""
    m = _CTE_PREFIX.match(sql)
    if m is None:
        return None
    ctes: list[CTE] = []
    pos = m.end()
    while True:
        head = _CTE_HEAD.match(sql, pos)
        if head is None:
            return None
        close = None
        for tok, depth in _depth_tokens(token_re, sql, head.end()):
            if tok.group(0) == ")" and depth < 0:
                close = tok.start()
                break
            if tok.group(0) == ";" and depth == 0:
                return None
        if close is None:
            return None
        writes = _BODY_WRITE.match(sql, head.end()) is not None
        ctes.append(CTE(unquote(head.group("name")), head.end(), close, writes))
        after = _NEXT_CTE.match(sql, close + 1)
        if after is None:
            main = _MAIN_AFTER_CTES.match(sql, close + 1)
            return WithList(tuple(ctes), main.start("kw")) if main else None
        pos = after.end()


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
    if len(sql) <= _CACHED_SQL_LENGTH:
        return _cached_compound(sql, vendor)
    return _compound(sql, vendor)


@functools.lru_cache(maxsize=128)
def _cached_compound(sql: str, vendor: str) -> list[Part] | None:
    return _compound(sql, vendor)


def _compound(sql: str, vendor: str) -> list[Part] | None:
    joined = _joined_update(sql) if _UPDATE_HEAD.match(sql) else None
    if joined is not None:
        return [Part(unquote(table), sql, _joined_update_statement(sql, i) if vendor == "mysql" else None, None, True)
                for i, (table, _ref) in enumerate(joined[0])]
    token_re = _TOKENS.get(vendor, _TOKEN_STD)
    ctes = with_list(sql, token_re)
    if ctes is None:
        return None
    run_end = ctes.read_only_end()
    later = {c.name for c in ctes.ctes if c.end >= run_end}
    every = _placeholders(token_re, sql, 0, len(sql))
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
            stmt = _analyse(masked, vendor)
            if stmt is not None:
                stmt = dataclasses.replace(stmt, sql=sql, placeholders=every, with_end=run_end)
        parts.append(Part(table, body, stmt, cte, not (table_names(body) & later)))
    if _MAIN_WRITE.match(sql, ctes.main):
        text = sql[ctes.main:]
        target = write_target(" " * ctes.main + text)
        table = target[1] if target is not None else ""
        stmt = _analyse(sql, vendor) if table else None
        parts.append(Part(table, text, stmt, None, not (table_names(text) & later), before=False))
    return parts


_MERGE_HEAD = re.compile(
    _LEAD + rf"merge\s+into\s+(?:only\s+)?{_QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!using\b){_IDENT}))?\s+using\b",
    re.I | re.S,
)
# The words that delimit MERGE's clauses, and what the clauses contain.
_TOKEN_MERGE = re.compile(
    r"\$(?P<dq>(?:[A-Za-z_][A-Za-z_0-9]*)?)\$.*?\$(?P=dq)\$|(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'"
    r"|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|[();,]|%%|%s|%\((?P<name>\w+)\)s"
    r"|\b(?P<kw>on|when|not|matched|by|and|then|insert|update|delete|do|values|default|returning|case|end)\b",
    re.I | re.S,
)


@dataclass(frozen=True)
class MergeClause:
    """One ``WHEN [NOT] MATCHED [AND condition] THEN <action>`` of a MERGE."""

    matched: bool
    condition: tuple[int, int] | None   # span of its AND condition
    then: int                           # where THEN starts: an extra condition goes before it
    action: str                         # update | delete | insert | nothing
    columns: list[str] | None = None    # INSERT's column list, normalised
    values: list[tuple[int, int]] | None = None  # INSERT's VALUES expressions, one span each


@dataclass(frozen=True)
class Merge:
    """The parts of a ``MERGE INTO <target> USING <source> ON <condition> WHEN ...`` statement
    (PostgreSQL 15+) that capture needs; offsets index into ``sql``."""

    sql: str
    table: str                 # normalised target
    target: str                # the target as a FROM clause: table [alias]
    ref: str                   # how the statement names the target in column references
    source: tuple[int, int]    # span of the data source (a table or subquery, with its alias)
    on: tuple[int, int]        # span of the join condition
    clauses: tuple[MergeClause, ...]
    placeholders: list[tuple[int, str | None]]
    keyword = "MERGE"

    def count_params_before(self, offset: int) -> int:
        return bisect_left(self.placeholders, offset, key=_offset)


def analyse_merge(sql: str) -> Merge | None:
    """Scan a MERGE statement; None when it has a shape this scanner does not follow (a WITH
    list before it, PostgreSQL 17's ``NOT MATCHED BY SOURCE`` and ``RETURNING``)."""
    head = _MERGE_HEAD.match(sql)
    if head is None:
        return None
    top: list[tuple[str, int, int]] = []
    depth, case = 0, 0
    end = len(sql.rstrip())
    for tok in _TOKEN_MERGE.finditer(sql, head.end()):
        text = tok.group(0)
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif text == ";" and depth == 0:
            if not _ONLY_COMMENTS[False].match(sql, tok.end()):
                return None
            end = tok.start()
            break
        elif tok.group("kw") and depth == 0:
            word = tok.group("kw").lower()
            # CASE ... WHEN ... THEN ... END in an expression is not a clause.
            case += (word == "case") - (word == "end" and case > 0)
            if not case and word != "case" and word != "end":
                top.append((word, tok.start(), tok.end()))
        elif text == "," and depth == 0 and not case:
            top.append((",", tok.start(), tok.end()))
    words = [w for w, _, _ in top]
    if "on" not in words or "when" not in words or "returning" in words or "by" in words:
        return None
    on_kw = top[words.index("on")]
    whens = [i for i, w in enumerate(words) if w == "when"]
    clauses = []
    for n, i in enumerate(whens):
        stop = top[whens[n + 1]][1] if n + 1 < len(whens) else end
        part = [t for t in top[i + 1:] if t[1] < stop]
        pw = [w for w, _, _ in part]
        matched = pw[:1] == ["matched"]
        if not matched and pw[:2] != ["not", "matched"] or "then" not in pw:
            return None
        then = part[pw.index("then")]
        after = pw[pw.index("then") + 1:pw.index("then") + 2]
        action = {"update": "update", "delete": "delete", "insert": "insert", "do": "nothing"}.get(
            after[0] if after else "", "")
        if not action:
            return None
        condition = None
        lead = 1 if matched else 2
        if pw[lead:lead + 1] == ["and"]:
            condition = (part[lead][2], then[1])
        columns = values = None
        if action == "insert":
            columns, values = _merge_insert(sql, then[2], stop)
        clauses.append(MergeClause(matched, condition, then[1], action, columns, values))
    alias = head.group("alias")
    return Merge(
        sql=sql, table=unquote(head.group("table")), ref=alias or head.group("table"),
        target=sql[head.start("table"):head.end() - len("using")].strip(),
        source=(head.end(), on_kw[1]), on=(on_kw[2], top[whens[0]][1]), clauses=tuple(clauses),
        placeholders=_placeholders(_TOKEN_PG, sql, 0, end),
    )


_MERGE_INSERT = re.compile(r"\s*insert\s*(?:\((?P<cols>[^()]*)\))?\s*(?:overriding\s+\w+\s+value\s*)?values\s*\(",
                           re.I | re.S)


def _merge_insert(sql: str, start: int, stop: int) -> tuple[list[str] | None, list[tuple[int, int]] | None]:
    """An INSERT action's column list and the span of each VALUES expression."""
    m = _MERGE_INSERT.match(sql, start, stop)
    if m is None or m.group("cols") is None:
        return None, None
    columns = [unquote(c.strip()) for c in m.group("cols").split(",")]
    spans, begin = [], m.end()
    for tok, depth in _depth_tokens(_TOKEN_MERGE, sql, m.end()):
        if tok.start() >= stop:
            break
        if depth == 0 and tok.group(0) == ",":
            spans.append((begin, tok.start()))
            begin = tok.end()
        elif depth < 0:
            spans.append((begin, tok.start()))
            break
    return (columns, spans) if len(spans) == len(columns) else (None, None)


_UPDATE_HEAD = re.compile(_LEAD + r"(?P<kw>update)\s+(?:(?:low_priority|ignore)\s+)*", re.I | re.S)
_JOIN_ENTRY = re.compile(
    rf"(?:,|\bjoin\b)\s*(?P<t>{_IDENT}(?:\s*\.\s*{_IDENT})?)"
    rf"(?:\s+(?:as\s+)?(?P<a>(?!(?:inner|left|right|cross|join|on|using|natural|straight_join|set)\b){_IDENT}))?",
    re.I,
)
_ASSIGNED = re.compile(rf"\s*(?P<q>{_IDENT})\s*\.\s*{_IDENT}\s*=", re.S)


def _joined_update(sql: str) -> tuple[list[tuple[str, str]], int, int, int, int | None] | None:
    """MySQL's multi-table UPDATE (``UPDATE t JOIN u ON ... SET t.a = ..., u.b = ... WHERE ...``)
    when each SET column names its table: ``([(table, its reference), ...], join list start, SET
    keyword start, SET list start, WHERE condition start or None)``, tables in SET order."""
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
    written: dict[str, str] = {}  # normalised reference -> as written
    for a, b in zip(bounds, bounds[1:], strict=False):
        m = _ASSIGNED.match(sql, a, b)
        if m is None:
            return None  # an unqualified column: which table it belongs to is the server's call
        written.setdefault(unquote(m.group("q")), m.group("q"))
    if any(key not in refs for key in written):
        return None
    tables = [(refs[key], ref) for key, ref in written.items()]
    return (tables, head.end(), set_kw.start(), set_kw.end(), where_kw.end() if where_kw else None)


def _placeholders(token_re: re.Pattern[str], sql: str, start: int, end: int) -> list[tuple[int, str | None]]:
    return [(t.start(), t.group("name")) for t in token_re.finditer(sql, start, end)
            if t.group(0) == "%s" or t.group("name")]


def _joined_update_statement(sql: str, which: int = 0) -> Statement | None:
    """The Statement of a multi-table UPDATE's write to its ``which``-th table (SET order);
    None when it is no such UPDATE."""
    joined = _joined_update(sql)
    if joined is None or which >= len(joined[0]):
        return None
    tables, join_start, set_at, set_start, where_start = joined
    table, ref = tables[which]
    end = len(sql.rstrip().rstrip(";").rstrip())
    placeholders = _placeholders(_TOKEN_MYSQL, sql, 0, len(sql))
    return Statement(
        sql=sql, kind="update", keyword="UPDATE", table=unquote(table), ref=ref, multi_table_delete=False,
        source=sql[join_start:set_at].strip(), from_start=join_start, set_start=set_start,
        where=(where_start, end) if where_start is not None else None, where_end=end, returning=None,
        returning_at=None, upsert=False, ignore=False, replace=False, columns=None, values_start=None, end=end,
        placeholders=placeholders,
    )


def _analyse(sql: str, vendor: str) -> Statement | None:
    if vendor == "mysql" and _UPDATE_HEAD.match(sql) and not _UPDATE.match(sql):
        joined = _joined_update(sql)
        return _joined_update_statement(sql) if joined and len(joined[0]) == 1 else None
    if _CTE_PREFIX.match(sql):
        # The main statement after a WITH list (whose queries may write: see compound_writes).
        token_re = _TOKENS.get(vendor, _TOKEN_STD)
        ctes = with_list(sql, token_re)
        if ctes is None or not _MAIN_WRITE.match(sql, ctes.main):
            return None
        inner = _analyse(" " * ctes.main + sql[ctes.main:], vendor)
        if inner is None:
            return None
        return dataclasses.replace(inner, sql=sql, placeholders=_placeholders(token_re, sql, 0, ctes.main)
                                   + inner.placeholders, prefix_end=ctes.main, with_end=ctes.read_only_end())
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
        sql=sql, kind=kind, keyword=keyword, table=unquote(table), ref=ref,
        multi_table_delete=multi, source=source, from_start=from_start, set_start=set_start, where=where,
        where_end=where_end, returning=returning, returning_at=returning_at, upsert=upsert, ignore=ignore, replace=replace, columns=columns,
        values_start=values_start, end=end, placeholders=placeholders, join_list=join_list,
        select_start=select_start,
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
    # Its own parameters: not those of a WITH list before it or an ON CONFLICT clause after it.
    if params is not None:
        first = stmt.count_params_before(stmt.values_start)
        last = stmt.count_params_before(stmt.values_start + len(body))
        if first or last != len(params):
            params = list(params)[first:last]
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
