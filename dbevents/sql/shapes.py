"""Scanners for statement shapes beyond one plain INSERT/UPDATE/DELETE: a leading WITH list,
MySQL's multi-table UPDATE, and MERGE."""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

from dbevents.sql.tokens import (
    GAP,
    IDENT,
    LEAD,
    QNAME,
    STANDARD,
    TOKEN_MYSQL,
    TOKEN_PG,
    depth_tokens,
    find_placeholders,
    offset_of,
    unquote,
)

CTE_PREFIX = re.compile(LEAD + r"with\s+(?:recursive\s+)?", re.I | re.S)
# One entry of a WITH list up to its query's opening parenthesis: name [(columns)] AS [NOT] [MATERIALIZED] (
_CTE_HEAD = re.compile(
    rf"\s*(?P<name>{IDENT})\s*(?:\([^()]*\)\s*)?as\s+(?:(?:not\s+)?materialized\s+)?\(", re.I | re.S,
)
_BODY_WRITE = re.compile(GAP + r"(?:insert|update|delete|merge)\b", re.I | re.S)
MAIN_WRITE = re.compile(r"(?:insert|update|delete|replace)\b", re.I)
_NEXT_CTE = re.compile(GAP + ",", re.S)
_MAIN_AFTER_CTES = re.compile(GAP + r"(?P<kw>select|insert|update|delete|replace|values|table|merge)\b", re.I | re.S)


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
    m = CTE_PREFIX.match(sql)
    if m is None:
        return None
    ctes: list[CTE] = []
    pos = m.end()
    while True:
        head = _CTE_HEAD.match(sql, pos)
        if head is None:
            return None
        close = None
        for tok, depth in depth_tokens(token_re, sql, head.end()):
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


_MERGE_HEAD = re.compile(
    LEAD + rf"merge\s+into\s+(?:only\s+)?{QNAME}(?:\s+(?:as\s+)?(?P<alias>(?!using\b){IDENT}))?\s+using\b",
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
        return bisect_left(self.placeholders, offset, key=offset_of)


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
            if not STANDARD.only_comments.match(sql, tok.end()):
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
        placeholders=find_placeholders(TOKEN_PG, sql, 0, end),
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
    for tok, depth in depth_tokens(_TOKEN_MERGE, sql, m.end()):
        if tok.start() >= stop:
            break
        if depth == 0 and tok.group(0) == ",":
            spans.append((begin, tok.start()))
            begin = tok.end()
        elif depth < 0:
            spans.append((begin, tok.start()))
            break
    return (columns, spans) if len(spans) == len(columns) else (None, None)


UPDATE_HEAD = re.compile(LEAD + r"(?P<kw>update)\s+(?:(?:low_priority|ignore)\s+)*", re.I | re.S)
_JOIN_ENTRY = re.compile(
    rf"(?:,|\bjoin\b)\s*(?P<t>{IDENT}(?:\s*\.\s*{IDENT})?)"
    rf"(?:\s+(?:as\s+)?(?P<a>(?!(?:inner|left|right|cross|join|on|using|natural|straight_join|set)\b){IDENT}))?",
    re.I,
)
_ASSIGNED = re.compile(rf"\s*(?P<q>{IDENT})\s*\.\s*{IDENT}\s*=", re.S)


def joined_update(sql: str) -> tuple[list[tuple[str, str]], int, int, int, int | None] | None:
    """MySQL's multi-table UPDATE (``UPDATE t JOIN u ON ... SET t.a = ..., u.b = ... WHERE ...``)
    when each SET column names its table: ``([(table, its reference), ...], join list start, SET
    keyword start, SET list start, WHERE condition start or None)``, tables in SET order."""
    head = UPDATE_HEAD.match(sql)
    if head is None:
        return None
    set_kw, where_kw = None, None
    commas: list[int] = []
    for tok, depth in depth_tokens(TOKEN_MYSQL, sql, head.end()):
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
    for tok in TOKEN_MYSQL.finditer(sql, set_kw.end(), stop):
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


