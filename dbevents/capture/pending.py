"""The pending events of one connection's transaction: one :class:`PendingEvent` per row a
statement changed, merged where one ``save()`` wrote several tables of an inheritance chain,
dropped with the savepoint they were written under, and completed before COMMIT
(:mod:`dbevents.capture.loading`); a large transaction hands them over in chunks as it goes."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbevents import conf, runtime
from dbevents.capture.loading import Loading, PendingEvent, Row
from dbevents.capture.rows import CREATED, DELETED, Rows
from dbevents.registry import TableInfo

if TYPE_CHECKING:
    from django.db.models import Model

__all__ = ["NEVER", "PendingEvent", "PendingEvents", "Row", "Spilled", "describe", "one_per_key"]


@dataclass(eq=False)
class Spilled:
    """Events of a large transaction already written to the outbox, inside it, before COMMIT."""

    statement_no: int                  # statements captured when they were written
    built_before: int                  # the transaction's events built before them
    ids: array = field(default_factory=lambda: array("q"))  # their outbox ids, in order


NEVER = float("inf")


class PendingEvents(Loading):
    """The ledger of one connection: this transaction's pending events, in statement order."""

    def __init__(self, connection: Any, rows: Rows) -> None:
        self.connection = connection
        self.rows = rows
        self.events: list[PendingEvent] = []
        self.latest: dict[tuple[type[Model], Any], PendingEvent] = {}
        self.incomplete: list[PendingEvent] = []
        self.statement_no = 0          # statements captured on this connection so far
        self.marks: dict[str, int] = {}  # savepoint id -> statement_no when it was created
        self.last_mark = 0             # statement_no at the latest savepoint
        self._tables: dict[int, str] = {}  # this transaction: statement -> table written
        self._layouts: dict[type[Model], list[tuple[str, int]]] = {}
        self._sources: dict[type[Model], dict[str, tuple[str, int]]] = {}
        # A large transaction writes its events to the outbox in chunks as it goes (see
        # dbevents.capture.commit.spill): ``spill`` is called once more than ``spill_after``
        # events are pending; ``series`` carries the transaction's id and ordinals across chunks.
        self.spill: Callable[[PendingEvents], None] | None = None
        self.spill_after: float | None = None   # None: DBEVENTS_TRANSACTION_CHUNK
        self.spilled: list[Spilled] = []
        self.series: Any = None

    def next_statement(self) -> int:
        self.statement_no += 1
        return self.statement_no

    # ------------------------------------------------------------------ recording

    def record(self, info: TableInfo, rows: Sequence[Row], mutes: tuple[runtime.Mute, ...], *,
               start: int = 0) -> None:
        """The rows one statement changed in ``info``: one pending event per row (or merged into
        the same object's: one save of a multi-table-inheritance model writes the parent table,
        then the child's). ``start`` > 0: more rows of the statement recorded last, the first
        ``start`` of its rows having been recorded already."""
        order = self.statement_no if start else self.next_statement()
        self._tables[order] = info.key
        if not rows:
            return
        try:
            rows = sorted(rows, key=lambda r: r[0])
        except TypeError:  # keys of mixed types: keep the statement's order
            pass
        label = info.entry.model._meta.label if info.entry else None
        spill_after = NEVER if self.spill is None else self.spill_after
        if spill_after is None:
            spill_after = conf.get("DBEVENTS_TRANSACTION_CHUNK")
        for index, (pk, values, action) in enumerate(rows, start=start):
            if mutes and label and not info.descendants and runtime.is_muted(mutes, label, pk):
                continue
            key = (info.root, pk)
            event = self.latest.get(key)
            if event is not None and self._merges(event, info, action, order):
                event.tables.add(info.key)
                event.last = order
                event.top = min(event.top, info.depth)
                if info.depth > event.table.depth:
                    event.table = info
                if values is not None:
                    event.parts[info.key] = values
                continue
            event = PendingEvent(
                order=(order, index), root=info.root, pk=pk, action=action, table=info,
                tables={info.key}, parts={info.key: values} if values is not None else {},
                mutes=mutes, last=order, top=info.depth,
            )
            self.events.append(event)
            self.latest[key] = event
            if values is None or info.depth or info.descendants:
                self.incomplete.append(event)
            if len(self.events) > spill_after:
                self.spill(self)  # type: ignore[misc]
                spill_after = self.spill_after or NEVER

    def record_cascade(self, found: list[tuple[TableInfo, list[Any], str]], mutes: tuple[runtime.Mute, ...]) -> None:
        """The events of the rows the database changed itself (:meth:`Rows.db_cascade`), deepest
        first (as Django's own collector orders deletes); SET NULL/DEFAULT rows are read back at
        COMMIT."""
        for child, rows, action in reversed(found):
            if action == DELETED:
                self.record(child, [(child.pk_of(r), r, DELETED) for r in rows], mutes)
            else:
                self.record(child, [(k, None, action) for k in rows], mutes)

    def _merges(self, event: PendingEvent, info: TableInfo, action: str, order: int) -> bool:
        """Whether this statement continues the same object's write rather than making a new
        event: ``save()`` of a multi-table-inheritance model writes the parent table, then the
        child's, in consecutive statements; a cascade deletes the child row, then the parent's.
        Never across a savepoint (it could be rolled back alone)."""
        if event.action != action or info.key in event.tables or event.instance is not None:
            return False
        if event.last <= self.last_mark:
            return False
        if action == DELETED:
            return info.depth < event.top
        if info.depth <= event.table.depth:
            return False
        # Consecutive statements -- or separated only by writes to parents this model reaches
        # through links of their own (``Shop(Place, Tagged)`` inserts shop_tagged in between).
        between = range(event.last + 1, order)
        if not between:
            return True
        linked = self.key_sources(info.model)
        return all(self._tables.get(n) in linked for n in between)

    def settle(self, info: TableInfo, action: str, pks: set[Any] | None, inserting: bool) -> None:
        """Before a statement may change rows whose pending events still lack row data, load
        that data, so every event carries the row as it stood after its own statement."""
        if not self.incomplete or inserting:
            return
        todo = []
        for event in self.incomplete:
            if event.root is not info.root or (pks is not None and event.pk not in pks):
                continue
            merges = (pks is not None and self.latest.get(event.key) is event
                      and self._merges(event, info, action, self.statement_no + 1))
            if not merges:
                todo.append(event)
        if todo:
            self.load_missing(todo)

    def load_missing_of(self, info: TableInfo) -> None:
        """:meth:`load_missing` for the events of ``info``'s inheritance chain (before an unheard
        write to it)."""
        self.load_missing([e for e in self.incomplete if e.root is info.root])

    # ------------------------------------------------------------------ savepoints and the end

    def mark_savepoint(self, sid: str) -> None:
        """Remember where savepoint ``sid`` was created (Atomic's and ``transaction.savepoint()``'s)."""
        self.marks[sid] = self.last_mark = self.statement_no

    def rollback_savepoint(self, sid: str) -> None:
        """Drop the events of the statements run since savepoint ``sid`` was created (the
        outbox rows written since then are gone with the database's rollback)."""
        mark = self.marks.get(sid)
        if mark is None:
            return
        gone = [s for s in self.spilled if s.statement_no > mark]
        if gone:
            self.spilled = self.spilled[:len(self.spilled) - len(gone)]
            self.series.built = gone[0].built_before  # their ordinals are free again
        if not self.events:
            return
        self.events = [e for e in self.events if e.order[0] <= mark]
        keep = {id(e) for e in self.events}
        self.incomplete = [e for e in self.incomplete if id(e) in keep]
        self.latest = {}
        for event in self.events:
            self.latest[event.key] = event
        # Statements after the rollback must not merge into what stood before it.
        self.last_mark = self.statement_no

    def discard(self) -> None:
        """Forget this transaction's events (rollback, close, or handed over for publishing)."""
        self.events = []
        self.latest = {}
        self.incomplete = []
        self._tables = {}
        self.marks = {}
        self.last_mark = self.statement_no
        self.spilled = []
        self.series = None
        self.spill_after = None

    # ------------------------------------------------------------------ large transactions

    def spillable(self) -> list[PendingEvent]:
        """The events that may be written to the outbox before COMMIT, in statement order: rows
        of single-table models (no later statement can merge into them) captured after the
        latest savepoint (a rollback to it removes their outbox rows with them), and no
        earlier event of the same row stays behind (per-row order is outbox-id order)."""
        behind: set[tuple[type[Model], Any]] = set()
        ready = []
        for event in self.events:
            table = event.table
            if (event.order[0] > self.last_mark and not table.depth and not table.descendants
                    and table.entry is not None and len(table.entry.tables) == 1 and event.key not in behind):
                ready.append(event)
            else:
                behind.add(event.key)
        return ready

    def forget(self, events: list[PendingEvent]) -> None:
        """Drop ``events`` from the ledger: they were written to the outbox (or describe no row)."""
        gone = {id(e) for e in events}
        self.events = [e for e in self.events if id(e) not in gone]
        self.incomplete = [e for e in self.incomplete if id(e) not in gone]
        for event in events:
            if self.latest.get(event.key) is event:
                del self.latest[event.key]

def one_per_key(rows: list[Row]) -> list[Row]:
    """An upsert that meets one key twice (``VALUES (1, ...), (1, ...)``) changed one row: one
    event, created if the statement created it, with the row as the statement left it."""
    merged: dict[Any, Row] = {}
    for pk, values, action in rows:
        prev = merged.get(pk)
        if prev is not None:
            action = CREATED if CREATED in (prev[2], action) else action
            values = values if values is not None else prev[1]
        merged[pk] = (pk, values, action)
    return list(merged.values()) if len(merged) != len(rows) else rows


def describe(events: list[PendingEvent]) -> str:
    """``"shop.Order pks=[1, 2]; shop.Item pks=[7]"``: which rows a log line is about."""
    by_model: dict[str, list[Any]] = {}
    for e in events:
        label = e.entry.label if e.entry else e.table.model._meta.label
        by_model.setdefault(label, []).append(e.pk)
    return "; ".join(
        f"{label} pks={pks[:20]}{'...' if len(pks) > 20 else ''}" for label, pks in by_model.items()
    )
