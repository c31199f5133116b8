"""``executemany()`` of a write to a watched table: one driver batch where the driver returns each
statement's rows (psycopg 3), else one captured ``execute()`` per parameter set at the driver --
below the inner execute wrappers and the query log, which see one ``executemany()`` as on the
stock engine. Where the driver's own batch is all-or-nothing, so is this one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbevents import runtime
from dbevents.capture import returning
from dbevents.capture.cursor import UNSET, replay
from dbevents.capture.rows import names_keys
from dbevents.capture.write import Write
from dbevents.registry import TableInfo
from dbevents.sql import analyse


def executemany(capture: Any, info: TableInfo | None, mutes: tuple[runtime.Mute, ...], raw: Any, sql: str,
                rows: list[Any], context: dict[str, Any]) -> Any:
    """Run ``sql`` once per parameter set in ``rows`` on the driver cursor ``raw`` for
    ``capture`` (the connection's ``ConnectionCapture``); returns what the driver's
    ``executemany()`` returns."""
    wrapper = context["cursor"]
    lastrowid = getattr(raw, "lastrowid", UNSET)
    stmt = analyse(sql, capture.vendor.name)
    inserting = stmt is not None and stmt.kind == "insert"
    atomic = capture.vendor.executemany_atomic(inserting)
    autocommit = capture.autocommit()
    if stmt is not None and info is not None:
        batch = Write(stmt, info, None, raw.execute, context, mutes, capture.connection, capture.vendor, capture.rows,
                      capture.pending, autocommit)
        if returning.batch_returns(batch):
            written = (capture.in_raw_transaction(lambda: returning.run_batch(batch, rows), context)
                       if autocommit else returning.run_batch(batch, rows))
            replay(wrapper, raw, None, None, rowcount=sum(len(w) for w in written),
                                          shown=(sql, rows[-1] if rows else None))
            return capture.vendor.executemany_result(wrapper.cursor.rowcount, raw)
    ids: list[Any] = []

    def run_all() -> int:
        total = 0
        for one in rows:
            wrapper.cursor = raw
            capture.capture_execute(info, mutes, raw, sql, one, context, autocommit and not atomic)
            count = wrapper.cursor.rowcount
            total += max(count, 0) if count is not None else 0
            if capture.vendor.collects_lastrowid:
                ids.append(wrapper.cursor.lastrowid)
        return total

    if autocommit and atomic:
        total = capture.in_raw_transaction(run_all, context)
    elif atomic and capture.vendor.collects_lastrowid:
        total = _in_savepoint(capture, run_all)  # MySQL: undo a failed batch's rows, not the transaction
    else:
        total = run_all()
    if ids and inserting and info is not None:
        # As for one multi-row INSERT: the first generated key, or the last given one.
        lastrowid = ids[-1] if names_keys(stmt, info) else ids[0]  # type: ignore[arg-type]
    replay(wrapper, raw, None, None, rowcount=total, lastrowid=lastrowid,
                                  shown=(sql, rows[-1] if rows else None))
    return capture.vendor.executemany_result(total, raw)


def _in_savepoint(capture: Any, run: Callable[[], Any]) -> Any:
    """Run ``run`` behind a savepoint of the driver's own: on failure its writes and events
    are undone, the enclosing transaction goes on."""
    sid = "dbevents_batch"
    capture.rows.execute(f"SAVEPOINT {sid}")
    capture.pending.mark_savepoint(sid)
    try:
        result = run()
    except BaseException:
        capture.rows.execute(f"ROLLBACK TO SAVEPOINT {sid}")
        capture.pending.rollback_savepoint(sid)
        raise
    finally:
        capture.pending.marks.pop(sid, None)
    capture.rows.execute(f"RELEASE SAVEPOINT {sid}")
    return result
