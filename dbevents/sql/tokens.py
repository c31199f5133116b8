"""The lexical layer every SQL scanner of dbevents shares: identifiers and their quoting, the
token patterns of each dialect (string literals, quoted names, comments, parentheses,
placeholders and the keywords that delimit clauses), and what differs between dialects."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

IDENT = r'(?:"(?:[^"]|"")+"|`(?:[^`]|``)+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
QNAME = rf"(?P<table>{IDENT}(?:\s*\.\s*{IDENT})?)"
GAP = r"\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|\Z))\s*)*"  # spaces and comments
LEAD = r"\A" + GAP

_KEYWORDS = (
    "where", "returning", "order", "limit", "on", "set", "values", "select", "from",
    "conflict", "duplicate", "do", "group", "having", "window", "union", "for", "using",
)
TOKEN_STD = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|--[^\n]*|/\*.*?\*/|[();]|%%|%s|%\((?P<name>\w+)\)s"
    r"|\b(?P<kw>" + "|".join(_KEYWORDS) + r")\b",
    re.I | re.S,
)
# PostgreSQL also has dollar-quoted strings ($$...$$, $tag$...$tag$) and escape strings (E'it\'s').
TOKEN_PG = re.compile(
    r"\$(?P<dq>(?:[A-Za-z_][A-Za-z_0-9]*)?)\$.*?\$(?P=dq)\$|(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'"
    r"|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|[();]|%%|%s|%\((?P<name>\w+)\)s"
    r"|\b(?P<kw>" + "|".join(_KEYWORDS) + r")\b",
    re.I | re.S,
)
# MySQL also ends a string at an unescaped quote only: 'it\'s'.
TOKEN_MYSQL = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`(?:[^`]|``)*`|--(?=\s|$)[^\n]*|#[^\n]*|/\*.*?\*/|[();]|%%|%s|%\((?P<name>\w+)\)s"
    r"|\b(?P<kw>" + "|".join(_KEYWORDS) + r")\b",
    re.I | re.S,
)


# What may follow a statement's closing semicolon: whitespace and comments.
_ONLY_COMMENTS = re.compile(r"\s*(?:(?:--[^\n]*|/\*.*?\*/)\s*)*\Z", re.S)
_ONLY_COMMENTS_MYSQL = re.compile(r"\s*(?:(?:--(?=\s|$)[^\n]*|#[^\n]*|/\*.*?\*/)\s*)*\Z", re.S)


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL of the databases dbevents captures (``connection.vendor``)."""

    tokens: re.Pattern[str]         # literals, quoted names, comments, placeholders, clause keywords
    only_comments: re.Pattern[str]  # what may follow a statement's closing semicolon
    joined_update: bool = False     # UPDATE t JOIN u ON ... SET ...: MySQL's multi-table UPDATE
    delete_using_joins: bool = False  # DELETE FROM t USING <join list> is MySQL's multi-table DELETE


DIALECTS = {
    "postgresql": Dialect(TOKEN_PG, _ONLY_COMMENTS),
    "mysql": Dialect(TOKEN_MYSQL, _ONLY_COMMENTS_MYSQL, joined_update=True, delete_using_joins=True),
}
STANDARD = Dialect(TOKEN_STD, _ONLY_COMMENTS)  # SQLite, and anything else


def dialect(vendor: str) -> Dialect:
    """The :class:`Dialect` of ``connection.vendor``."""
    return DIALECTS.get(vendor, STANDARD)


# Django writes the same SQL text for every save() of a model, every get() ...: the results of
# recognising a statement are cached by its text. Only statements up to this length are cached
# (a bulk_create's is megabytes long and seldom repeats).
CACHED_SQL_LENGTH = 4096


@functools.lru_cache(maxsize=1024)
def unquote(name: str) -> str:
    """Normalise an identifier as written in SQL to the registry's key form.

    Quotes are removed (``"a""b"`` -> ``a"b``), each part of a qualified name is kept, and the
    result is lower-cased: table names that differ only by case are not supported.
    """
    parts = re.findall(IDENT, name)
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
    return tuple(re.findall(IDENT, name))


def depth_tokens(token_re: re.Pattern[str], sql: str, start: int = 0) -> Iterator[tuple[re.Match[str], int]]:
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


def find_placeholders(token_re: re.Pattern[str], sql: str, start: int, end: int) -> list[tuple[int, str | None]]:
    return [(t.start(), t.group("name")) for t in token_re.finditer(sql, start, end)
            if t.group(0) == "%s" or t.group("name")]


def offset_of(placeholder: tuple[int, str | None]) -> int:
    return placeholder[0]


def split_statements(sql: str, vendor: str) -> list[str] | None:
    """The statements of a string that holds several (``UPDATE ...; DELETE ...``), split at
    top-level semicolons outside literals and comments; None when it holds one statement
    (a trailing semicolon and comments after it do not make a second)."""
    sql_dialect = dialect(vendor)
    token_re = sql_dialect.tokens
    parts: list[str] = []
    start = 0
    for tok, depth in depth_tokens(token_re, sql):
        if tok.group(0) == ";" and depth <= 0:
            parts.append(sql[start:tok.start()])
            start = tok.end()
            if sql_dialect.only_comments.match(sql, start):
                break
    else:
        parts.append(sql[start:])
    parts = [p for p in parts if not sql_dialect.only_comments.match(p)]
    return parts if len(parts) > 1 else None


_NAME = re.compile(rf"{IDENT}(?:\s*\.\s*{IDENT})?")
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
