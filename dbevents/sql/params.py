"""What a write statement's own text and parameters say: the parameters of a clause, a WHERE that
is a primary-key filter, the rows of an INSERT's VALUES."""

from __future__ import annotations

import re
from typing import Any

from dbevents.sql.statement import Statement
from dbevents.sql.tokens import IDENT

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
        col = rf'(?:{IDENT}\s*\.\s*)?(?:"{re.escape(pk_column)}"|`{re.escape(pk_column)}`|{re.escape(pk_column)})'
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


