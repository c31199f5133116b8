"""The stand-in for the driver cursor after capture consumed a statement's result. :func:`replay`
is how capture puts it in place of ``CursorWrapper.cursor`` once a statement ran (only the
execute wrapper's ``DriverProxy`` stands there before)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

UNSET: Any = object()  # "the driver's own value"


class ReplayCursor:
    """Stands in for the driver cursor after capture consumed a statement's result.

    It replays the rows Django expects (its own RETURNING columns, without the ones capture
    added) or presents "no result set", as the driver does, when capture added the RETURNING
    clause itself; it shows the statement as the driver was given it (``shown``) to
    ``last_executed_query()``, and puts the real cursor back as soon as the next statement runs
    on it.
    """

    def __init__(self, wrapper: Any, raw: Any, rows: list[tuple[Any, ...]] | None,
                 description: Any, rowcount: int | None = None, lastrowid: Any = UNSET,
                 shown: tuple[str, Any] | None = None) -> None:
        self._wrapper = wrapper
        self.raw = raw
        self._rows = rows
        self._pos = 0
        self.description = description
        self._rowcount = rowcount
        self._lastrowid = lastrowid
        self.shown = shown

    @property
    def rowcount(self) -> int:
        if self._rowcount is not None:
            return self._rowcount
        if self._rows is not None and self._pos < len(self._rows):
            unread = self._wrapper.db.dbevents.vendor.rowcount_while_unread()
            if unread is not None:
                return unread  # type: ignore[no-any-return]
        return self.raw.rowcount  # type: ignore[no-any-return]

    @property
    def lastrowid(self) -> Any:
        return self.raw.lastrowid if self._lastrowid is UNSET else self._lastrowid

    # What Django's last_executed_query() reads: psycopg 3's ClientCursor ``_query.query``,
    # psycopg2's ``query``, MySQLdb's ``_executed`` -- the statement without capture's rewrite.
    @property
    def _query(self) -> Any:
        driver = self.raw._query
        if self.shown is None or driver is None:
            return driver
        return SimpleNamespace(query=self._mogrified(), params=None)

    @property
    def query(self) -> Any:
        driver = self.raw.query
        return driver if self.shown is None or driver is None else self._mogrified()

    @property
    def _executed(self) -> Any:
        # MySQLdb sets it once a statement succeeded.
        driver = self.raw._executed
        return driver if self.shown is None or driver is None else self._mogrified()

    def _mogrified(self) -> bytes:
        sql, params = self.shown  # type: ignore[misc]
        text = self.raw.mogrify(sql, params) if hasattr(self.raw, "mogrify") else sql
        return text.encode() if isinstance(text, str) else text  # type: ignore[no-any-return]

    def _restore(self) -> Any:
        if self._wrapper.cursor is self:
            self._wrapper.cursor = self.raw
        return self.raw

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._restore().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self._restore().executemany(*args, **kwargs)

    def close(self) -> Any:
        return self._restore().close()

    def _no_result(self, empty: Any) -> Any:
        """The driver's answer to a fetch after a statement without a result set."""
        return self._wrapper.db.dbevents.vendor.no_result(self.raw, empty)

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._rows is None:
            return self._no_result(None)  # type: ignore[no-any-return]
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int | None = None) -> Any:
        if self._rows is None:
            return self._no_result([])
        size = size or getattr(self.raw, "arraysize", 1) or 1
        rows = self._rows[self._pos:self._pos + size]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> Any:
        if self._rows is None:
            return self._no_result([])
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return rows

    def __iter__(self) -> Any:
        while (row := self.fetchone()) is not None:
            yield row

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.raw, name)
        if callable(value):
            # Any other cursor method (callproc, nextset, scroll, copy ...) starts something new
            # on the real cursor: step aside, as for the next execute().
            self._restore()
        return value


def buffer_result(context: dict[str, Any]) -> None:
    """Read the rows a statement still has to hand out into a :class:`ReplayCursor` (SQLite
    refuses to COMMIT before; see ``Vendor.reads_rows_before_commit``)."""
    wrapper = context["cursor"]
    raw = wrapper.cursor
    if isinstance(raw, ReplayCursor) or raw.description is None:
        return
    rows = raw.fetchall()
    replay(wrapper, raw, rows, raw.description, rowcount=raw.rowcount, lastrowid=raw.lastrowid)


def replay(wrapper: Any, raw: Any, rows: list[tuple[Any, ...]] | None, description: Any, *,
           rowcount: int | None = None, lastrowid: Any = UNSET, shown: tuple[str, Any] | None = None) -> ReplayCursor:
    """Put a :class:`ReplayCursor` over the driver cursor ``raw`` in Django's ``wrapper``: Django
    reads the statement's result from it (``rows`` None: "no result set")."""
    cursor = ReplayCursor(wrapper, raw, rows, description, rowcount=rowcount, lastrowid=lastrowid, shown=shown)
    wrapper.cursor = cursor
    return cursor
