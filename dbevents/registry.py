"""Which tables produce events, and how: built from ``MODELS_CRUD_EVENT`` once the app registry
is ready, cached, and rebuilt when the setting changes.

Capture looks tables up here by the normalised name it read from the SQL. A table is *watched*
when it belongs to a registered model or to a concrete parent of one (multi-table inheritance:
a parent-table UPDATE can change a registered child).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from dbevents import conf
from dbevents.representer import compile_representer
from dbevents.sql import unquote

if TYPE_CHECKING:
    from django.db.models import Field, Model

logger = logging.getLogger("dbevents")

ENTRY_KEYS = frozenset({"model", "serializer", "status_field", "event_name_prefix", "service_name"})


def table_key(db_table: str) -> str:
    """Normalise ``Meta.db_table`` like a name read from SQL; handles Django's
    ``'schema"."table'`` idiom for schema-qualified tables."""
    return unquote('"' + db_table.replace('"."', '"."') + '"') if '"."' in db_table else db_table.lower()


def event_prefix(model_name: str) -> str:
    """The default event-name prefix: the class name in snake case, exactly as
    django-events-sourcing made it (``StatusModel2`` -> ``status_model2``)."""
    return re.sub("(?<!^)(?=[A-Z])", "_", model_name).lower()


@dataclass
class ModelEntry:
    """One entry of ``MODELS_CRUD_EVENT``, resolved."""

    model: type[Model]
    label: str
    prefix: str
    status_field: str | None
    service_name: str | None
    serializer_path: str | None
    #: Keys of the tables holding this model's rows: its own, then its concrete parents'.
    tables: tuple[str, ...] = ()
    _serializer: Any = field(default=None, repr=False)
    _representer: Any = field(default=None, repr=False)

    def serializer_class(self) -> Any:
        """The DRF serializer class: the configured one, else a ``ModelSerializer`` with
        ``fields = "__all__"``; imported or built once."""
        if self._serializer is None:
            if self.serializer_path:
                self._serializer = import_string(self.serializer_path)
            else:
                from rest_framework import serializers

                meta = type("Meta", (), {"model": self.model, "fields": "__all__"})
                self._serializer = type(
                    f"{self.model.__name__}EventSerializer", (serializers.ModelSerializer,), {"Meta": meta}
                )
        return self._serializer

    def representer(self) -> Any:
        """``instance -> payload`` for the generated ``ModelSerializer``, or None when the entry
        names a serializer of its own.

        The generated serializer's output depends on nothing but the instance (no context, no
        methods of its own), so one instance with its fields built is shared: building a
        ``ModelSerializer``'s fields costs more than serializing a row with them, and its
        ``to_representation`` is compiled (:mod:`dbevents.representer`) where its fields allow.
        The payloads are exactly ``Serializer(instances, many=True).data``'s items. A configured
        serializer is instantiated for every transaction, as DRF expects.
        """
        if self.serializer_path:
            return None
        if self._representer is None:
            serializer = self.serializer_class()()
            serializer.fields  # noqa: B018 -- built once, here, not concurrently by two threads later
            self._representer = compile_representer(serializer, self.model) or serializer.to_representation
        return self._representer

    @functools.cached_property
    def serializer_may_query(self) -> bool:
        """Whether serializing a row may run queries: a configured serializer may do anything;
        the generated one reads many-to-many fields (forward ones, its ``__all__``) from the
        database."""
        return bool(self.serializer_path) or any(f.many_to_many and not f.auto_created
                                                 for f in self.model._meta.get_fields())

    def service(self) -> str:
        """The nameko service name the events of this model claim to come from."""
        return self.service_name or conf.get("SERVICE_NAME")


@dataclass
class TableInfo:
    """A watched table: the concrete model that owns it and its columns."""

    key: str
    model: type[Model]
    fields: tuple[Field, ...]          # local concrete fields, in column order
    pk: Field                          # the table's own primary key column
    root: type[Model]                  # root of the inheritance chain: groups events by (root, pk)
    depth: int                         # number of concrete parents
    entry: ModelEntry | None           # when the owning model (or a proxy of it) is registered
    descendants: tuple[ModelEntry, ...]  # registered strict descendants, most derived first
    pk_fields: tuple[Field, ...] = ()  # the primary key's columns: one, or a composite key's
    pk_indexes: tuple[int, ...] = ()   # their positions in ``fields``
    labels: tuple[str, ...] = ()       # labels of ``entry`` and ``descendants``: what muting checks
    # Watched tables the database changes itself when a row here is deleted (Registry._db_children).
    db_children: tuple[tuple[TableInfo, Any, str], ...] = ()

    @property
    def composite(self) -> bool:
        """Whether the primary key has several columns (Django 5.2 ``CompositePrimaryKey``)."""
        return len(self.pk_fields) > 1

    def pk_of(self, row: tuple[Any, ...]) -> Any:
        """The primary key of a row of ``fields``: a value, or a tuple for a composite key
        (what ``instance.pk`` is), as a :func:`hashable` key."""
        if len(self.pk_indexes) == 1:
            return hashable(row[self.pk_indexes[0]])
        return hashable(tuple(row[i] for i in self.pk_indexes))

    def pk_to_python(self, values: tuple[Any, ...]) -> Any:
        """The key from the database values of its columns, in ``pk_fields`` order."""
        if len(self.pk_fields) == 1:
            return hashable(self.pk_fields[0].to_python(values[0]))
        return hashable(tuple(f.to_python(v) for f, v in zip(self.pk_fields, values, strict=True)))

    def pk_db_values(self, pk: Any, connection: Any) -> list[Any]:
        """A key's column values prepared for the database, in ``pk_fields`` order."""
        pk = unwrap_key(pk)
        parts = pk if self.composite else (pk,)
        return [f.get_db_prep_value(v, connection) for f, v in zip(self.pk_fields, parts, strict=True)]


class UnhashableKey:
    """A primary-key value of a type that is not hashable (a field's ``from_db_value`` may
    return one): keys of one type share a hash, and equality decides -- correct, if slower."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(type(self.value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnhashableKey) and bool(self.value == other.value)

    def __repr__(self) -> str:
        return repr(self.value)


def hashable(value: Any) -> Any:
    """``value``, or an :class:`UnhashableKey` around it when it cannot be a dict key."""
    try:
        hash(value)
    except TypeError:
        return UnhashableKey(value)
    return value


def unwrap_key(value: Any) -> Any:
    """The key value itself (see :func:`hashable`)."""
    return value.value if isinstance(value, UnhashableKey) else value


class Registry:
    """Registered models and watched tables."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries: dict[type[Model], ModelEntry] = {}
        self.by_label: dict[str, ModelEntry] = {}
        for entry in entries:
            self.entries.setdefault(entry.model, entry)
            self.by_label.setdefault(entry.label.lower(), entry)
        self.tables: dict[str, TableInfo] = {}
        for entry in list(self.entries.values()):
            concrete: Any = entry.model._meta.concrete_model
            chain = [concrete, *concrete._meta.get_parent_list()]
            try:
                watched = {
                    key: self._describe(model)
                    for model in chain if (key := table_key(model._meta.db_table)) not in self.tables
                }
            except Exception:
                # One entry dbevents cannot describe must not break the writes of the others.
                logger.exception("dbevents: %s cannot be captured; its MODELS_CRUD_EVENT entry is ignored", entry.label)
                del self.entries[entry.model]
                self.by_label.pop(entry.label.lower(), None)
                continue
            entry.tables = tuple(table_key(m._meta.db_table) for m in chain)
            for key, info in watched.items():
                self.tables[key] = info
                # Raw SQL may name a schema-qualified table without its schema (search_path).
                if "." in key:
                    self.tables.setdefault(key.rsplit(".", 1)[1], info)
        for info in self.tables.values():
            info.db_children = self._db_children(info)

    def _db_children(self, info: TableInfo) -> tuple[tuple[TableInfo, Any, str], ...]:
        """Watched tables whose rows the database itself deletes or updates when a row of
        ``info`` is deleted (Django 6.1 ``DB_CASCADE``, ``DB_SET_NULL``, ``DB_SET_DEFAULT``):
        ``(child table, its foreign key, "CASCADE" | "SET NULL" | "SET DEFAULT")``."""
        found = []
        for rel in info.model._meta.related_objects:
            on_delete = getattr(rel, "on_delete", None)
            action = getattr(on_delete, "operation", None)  # DatabaseOnDelete: the SQL words
            if type(on_delete).__name__ != "DatabaseOnDelete" or not isinstance(action, str):
                continue
            fk = rel.field
            child = self.tables.get(table_key(fk.model._meta.db_table))
            if child is not None and fk.concrete:
                found.append((child, fk, action.upper()))
        return tuple(found)

    def _describe(self, model: type[Model]) -> TableInfo:
        meta = model._meta
        key = table_key(meta.db_table)
        # The root is the top of the chain of tables that share this row's key: follow the
        # primary key while it is a parent link (multiple inheritance and children with a key
        # of their own reach their other parents through links: capture follows those).
        root: Any = model
        while root._meta.pk.is_relation and getattr(root._meta.pk.remote_field, "parent_link", False):
            root = root._meta.pk.remote_field.model._meta.concrete_model
        entry = self.entries.get(model) or next(
            (e for m, e in self.entries.items() if m._meta.proxy and m._meta.concrete_model is model), None
        )
        descendants = sorted(
            (
                e for m, e in self.entries.items()
                if not m._meta.proxy and m is not model and model in m._meta.get_parent_list()
            ),
            key=lambda e: -len(e.model._meta.get_parent_list()),
        )
        fields = tuple(meta.local_concrete_fields)
        pk_fields = tuple(getattr(meta, "pk_fields", None) or [meta.pk])
        info = TableInfo(
            key=key, model=model, fields=fields, pk=meta.pk, root=root,
            depth=len(meta.get_parent_list()), entry=entry, descendants=tuple(descendants),
            pk_fields=pk_fields, pk_indexes=tuple(fields.index(f) for f in pk_fields),
            labels=tuple(e.label for e in ([entry] if entry else []) + descendants),
        )
        return info


def build_entries(raw: Any) -> list[ModelEntry]:
    """Resolve ``MODELS_CRUD_EVENT``; entries the system checks reject are skipped (and
    logged, since the checks may not have run in this process)."""
    entries = []
    for item in raw if isinstance(raw, (list, tuple)) else []:
        try:
            label = item["model"]
            model = apps.get_model(label)
        except Exception as exc:  # reported in detail by dbevents.E002
            logger.error("dbevents: MODELS_CRUD_EVENT entry %r is ignored: %s", item, exc)
            continue
        entries.append(
            ModelEntry(
                model=model,
                label=model._meta.label,
                prefix=item.get("event_name_prefix") or event_prefix(model.__name__),
                status_field=item.get("status_field"),
                service_name=item.get("service_name"),
                serializer_path=item.get("serializer"),
            )
        )
    return entries


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The registry for the current settings. Empty (and not cached) before apps are ready."""
    global _registry
    reg = _registry
    if reg is not None:
        return reg
    if not apps.ready:
        return Registry([])
    with _lock:
        if _registry is None:
            _registry = Registry(build_entries(conf.get("MODELS_CRUD_EVENT")))
        return _registry


@conf.on_reload
def reset() -> None:
    """Forget the cached registry (settings changed)."""
    global _registry
    with _lock:
        _registry = None


def _rest_framework_changed(*, setting: str, **kwargs: Any) -> None:
    # The generated serializers' fields were built under the previous REST_FRAMEWORK settings.
    if setting == "REST_FRAMEWORK":
        reset()


setting_changed.connect(_rest_framework_changed, dispatch_uid="dbevents.registry.rest_framework")
