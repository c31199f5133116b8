"""Completing pending events before they are built: the registered model each row belongs to
(the most derived one, for multi-table inheritance), the row data they still lack (one query per
table), and the model instance, as ``Model.from_db`` builds it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbevents import runtime
from dbevents.capture.rows import DELETED, Rows
from dbevents.registry import ModelEntry, TableInfo, get_registry, hashable, table_key

if TYPE_CHECKING:
    from django.db.models import Model

logger = logging.getLogger("dbevents")


@dataclass(eq=False)
class PendingEvent:
    """A future event: one row changed by one statement (for multi-table inheritance, by the
    statements of one save that wrote the row's parent and child tables)."""

    order: tuple[int, int]
    root: type[Model]
    pk: Any
    action: str
    table: TableInfo                     # deepest table written so far
    tables: set[str]
    parts: dict[str, tuple[Any, ...]]    # table key -> converted values of its local fields
    mutes: tuple[runtime.Mute, ...]
    last: int                            # the last statement merged into this event
    top: int                             # shallowest table depth written (deletes climb the chain)
    entry: ModelEntry | None = None
    instance: Model | None = None

    @property
    def key(self) -> tuple[type[Model], Any]:
        return (self.root, self.pk)


Row = tuple[Any, "tuple[Any, ...] | None", str]  # (key, converted values or None, action)


class Loading:
    """What :class:`~dbevents.capture.pending.PendingEvents` does to complete its events."""

    connection: Any
    rows: Rows
    events: list[PendingEvent]
    incomplete: list[PendingEvent]
    _layouts: dict[type[Model], list[tuple[str, int]]]
    _sources: dict[type[Model], dict[str, tuple[str, int]]]

    def load_missing(self, events: list[PendingEvent]) -> None:
        """Resolve each event's model and load the row data it still lacks (one query per
        table). Events whose row no longer exists, or whose model is not registered, are
        dropped: they describe no registered object."""
        if not events:
            return
        pending = [e for e in events if e.instance is None]
        registry = get_registry()
        # Multi-table inheritance: the most derived registered model that has this row.
        by_table: dict[str, list[PendingEvent]] = {}
        for event in pending:
            event.entry = event.table.entry
            if event.table.descendants and event.action != DELETED:
                by_table.setdefault(event.table.key, []).append(event)
        for here in by_table.values():
            unresolved = {e.pk: e for e in here}
            for desc in here[0].table.descendants:
                if not unresolved:
                    break
                dinfo = registry.tables[desc.tables[0]]
                source = self.key_sources(desc.model).get(here[0].table.key)
                if source is not None:
                    self._resolve_linked(desc, dinfo, source, unresolved)
                    continue
                for pk in self.rows.existing_keys(dinfo, list(unresolved)):
                    found = unresolved.pop(pk, None)
                    if found is not None:
                        found.entry = desc
        self._load_parts(pending)
        done = {id(e) for e in pending}
        for event in pending:
            if event.entry is None:
                logger.debug("dbevents: %s row %r belongs to no registered model", event.table.model._meta.label, event.pk)
            else:
                event.instance = self._instance(event)
        self.incomplete = [e for e in self.incomplete if id(e) not in done]
        dropped = {id(e) for e in pending if e.instance is None}
        if dropped:
            self.events = [e for e in self.events if id(e) not in dropped]

    def _load_parts(self, pending: list[PendingEvent]) -> None:
        """Load missing parts, table by table: first the tables that share the row's key, then
        those reached through a parent link of their own (multiple inheritance, a child with
        its own primary key), keyed by the link's value in a part already loaded."""
        registry = get_registry()
        todo = [e for e in pending if e.entry is not None]
        tried: set[tuple[int, str]] = set()
        while todo:
            need: dict[str, list[tuple[PendingEvent, Any]]] = {}
            deferred = []
            for event in todo:
                sources = self.key_sources(event.entry.model)  # type: ignore[union-attr]
                for key in event.entry.tables:  # type: ignore[union-attr]
                    if key in event.parts or (id(event), key) in tried:
                        continue
                    source = sources.get(key)
                    if source is not None and source[0] not in event.parts:
                        deferred.append(event)  # its link's table is loaded first
                        continue
                    tried.add((id(event), key))
                    wanted = event.pk if source is None else event.parts[source[0]][source[1]]
                    if wanted is not None:
                        need.setdefault(key, []).append((event, event.pk if source is None else hashable(wanted)))
            for key, waiting in need.items():
                tinfo = registry.tables[key]  # every table of a registered model's chain is watched
                rows = self.rows.load(tinfo, [k for _, k in waiting])
                folded = {_fold(k): k for k in rows}
                for event, wanted in waiting:
                    row = rows.get(wanted)
                    if row is None and wanted not in rows:
                        # A key from the statement's parameters that the database matched under a
                        # case-insensitive or pad-space collation ('abc' for 'ABC'): use the stored one.
                        stored = folded.get(_fold(wanted))
                        if stored is not None:
                            row = rows[stored]
                            if wanted == event.pk:
                                event.pk = stored
                    if row is not None:
                        event.parts[key] = row
            # Another round only for events whose link source was loaded in this one.
            todo = list({id(e): e for e in deferred}.values()) if need else []

    def _resolve_linked(self, desc: ModelEntry, dinfo: TableInfo, source: tuple[str, int],
                        unresolved: dict[Any, PendingEvent]) -> None:
        """Rows of a parent table that a descendant reaches through a parent link of its own
        (``Shop(Place, Tagged)``: ``shop_shop.tagged_ptr_id`` -> ``shop_tagged.tag_id``): such a
        row's event is the descendant's, under the descendant's key. When the same transaction
        already has that event (the save wrote the descendant's own tables too), it is dropped."""
        registry = get_registry()
        link_info = registry.tables[source[0]]
        if self.key_sources(desc.model).get(link_info.key) is not None:
            return  # the link lives on a table that is itself linked: not followed
        link_field = link_info.fields[source[1]]
        rows = list(self.rows.by_column(link_info, link_field, list(unresolved)))
        if link_info.key != dinfo.key and rows:
            # The link lives on an intermediate parent (Senator -> Congressman -> Politician):
            # only rows that are the descendant's are its events.
            mine = set(self.rows.existing_keys(dinfo, [link_info.pk_of(r) for r in rows]))
            rows = [r for r in rows if link_info.pk_of(r) in mine]
        for row in rows:
            found = unresolved.pop(hashable(row[source[1]]), None)
            if found is None:
                continue
            found.entry, found.root, found.pk = desc, dinfo.root, link_info.pk_of(row)
            found.parts = {source[0]: row}
            if any(e is not found and e.key == found.key and e.action == found.action for e in self.events):
                found.entry = None  # dropped with the events of no registered model

    def key_sources(self, model: type[Model]) -> dict[str, tuple[str, int]]:
        """For each table of ``model``'s inheritance chain that does not share the row's key:
        ``(table, column index)`` of the parent link whose value is its key there."""
        cached = self._sources.get(model)
        if cached is not None:
            return cached
        sources: dict[str, tuple[str, int] | None] = {table_key(model._meta.db_table): None}
        for child in [model, *model._meta.get_parent_list()]:
            child_key = table_key(child._meta.db_table)
            for parent, link in child._meta.parents.items():
                parent_key = table_key(parent._meta.concrete_model._meta.db_table)  # type: ignore[union-attr]
                if link is None or parent_key in sources or child_key not in sources:
                    continue
                columns = [f.column for f in child._meta.local_concrete_fields]
                if link.primary_key or link.column not in columns:
                    sources[parent_key] = sources[child_key]
                else:
                    sources[parent_key] = (child_key, columns.index(link.column))
        found = {k: v for k, v in sources.items() if v is not None}
        self._sources[model] = found
        return found

    def _instance(self, event: PendingEvent) -> Model | None:
        """The event's model instance, from its parts, as ``Model.from_db`` builds it."""
        model = event.entry.model  # type: ignore[union-attr]
        layout = self._layouts.get(model)
        if layout is None:
            layout = []
            for f in model._meta.concrete_fields:
                owner: Any = f.model._meta.concrete_model  # type: ignore[union-attr]
                layout.append((table_key(owner._meta.db_table), list(owner._meta.local_concrete_fields).index(f)))
            self._layouts[model] = layout
        values = []
        for key, index in layout:
            part = event.parts.get(key)
            if part is None:
                logger.warning("dbevents: %s row %r was not found when its %s event was built; the event is "
                               "lost", model._meta.label, event.pk, event.action)
                return None
            values.append(part[index])
        names = [f.attname for f in model._meta.concrete_fields]
        return model.from_db(self.connection.alias, names, values)


def _fold(value: Any) -> Any:
    return value.casefold().rstrip() if isinstance(value, str) else value
