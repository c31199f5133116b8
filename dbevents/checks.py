"""System checks for the dbevents settings (``manage.py check``; ids ``dbevents.E0xx`` and
``dbevents.W0xx``). Every message quotes the bad value; every hint says the fix."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core import checks
from django.db import connections

from dbevents import conf
from dbevents.registry import ENTRY_KEYS, get_registry


def _entries() -> tuple[list[dict[str, Any]], list[checks.CheckMessage]]:
    raw = conf.get("MODELS_CRUD_EVENT")
    invalid = conf.problems().get("MODELS_CRUD_EVENT")
    if invalid:   # conf.get gave the default, []
        return [], [checks.Error(
            f"{invalid}.",
            hint='Write MODELS_CRUD_EVENT = [{"model": "app_label.ModelName"}, ...].',
            id="dbevents.E001",
        )]
    good: list[dict[str, Any]] = []
    errors: list[checks.CheckMessage] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            errors.append(checks.Error(
                f"MODELS_CRUD_EVENT[{i}] must be a dict, not {type(item).__name__} {item!r}.",
                hint='Write {"model": "app_label.ModelName"}.',
                id="dbevents.E001",
            ))
        else:
            good.append(item)
    return good, errors


@checks.register("dbevents")
def check_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """MODELS_CRUD_EVENT entries: model, serializer, status_field, keys, duplicates."""
    entries, errors = _entries()
    seen: dict[Any, int] = {}
    for i, item in enumerate(entries):
        where = f"MODELS_CRUD_EVENT[{i}]"
        unknown = sorted(set(item) - ENTRY_KEYS)
        if unknown:
            errors.append(checks.Error(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}.",
                hint=f"Known keys: {', '.join(sorted(ENTRY_KEYS))}.",
                id="dbevents.E008",
            ))
        label = item.get("model")
        if not isinstance(label, str) or label.count(".") != 1:
            errors.append(checks.Error(
                f"{where} has model {label!r}; expected an 'app_label.ModelName' string.",
                hint='Write {"model": "shop.Order"}.',
                id="dbevents.E002",
            ))
            continue
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as exc:
            errors.append(checks.Error(
                f"{where} names model {label!r}, which does not exist ({exc}).",
                hint="Use the app label and model class name of an installed app, e.g. 'shop.Order'.",
                id="dbevents.E002",
            ))
            continue
        if model._meta.app_label == "dbevents":
            errors.append(checks.Error(
                f"{where} registers {label!r}, dbevents' own outbox table; its rows are events already.",
                hint=f"Remove {where}.",
                id="dbevents.E013",
            ))
            continue
        concrete = model._meta.concrete_model
        if concrete in seen:
            errors.append(checks.Error(
                f"{where} registers {label!r} again (first in MODELS_CRUD_EVENT[{seen[concrete]}]).",
                hint="Keep one entry per model (proxies share their model's table).",
                id="dbevents.E005",
            ))
        else:
            seen[concrete] = i
        path = item.get("serializer")
        if path is not None:
            errors.extend(_check_serializer(where, label, path))
        status = item.get("status_field")
        if status is not None:
            names = [f.name for f in model._meta.concrete_fields] + [f.attname for f in model._meta.concrete_fields]
            if status not in names:
                errors.append(checks.Error(
                    f"{where} has status_field {status!r}, which is not a field of {label}.",
                    hint=f"Use one of: {', '.join(sorted(set(f.name for f in model._meta.concrete_fields)))}.",
                    id="dbevents.E004",
                ))
        for key in ("event_name_prefix", "service_name"):
            value = item.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                errors.append(checks.Error(
                    f"{where} has {key} {value!r}; expected a non-empty string.",
                    hint=f"Remove {key!r} to use the default, or give a string.",
                    id="dbevents.E010",
                ))
    return errors


def _check_serializer(where: str, label: str, path: Any) -> list[checks.CheckMessage]:
    from django.utils.module_loading import import_string

    if not isinstance(path, str):
        return [checks.Error(
            f"{where} has serializer {path!r}; expected a dotted path string.",
            hint="Write 'shop.serializers.OrderSerializer'.",
            id="dbevents.E003",
        )]
    try:
        cls = import_string(path)
    except Exception as exc:
        return [checks.Error(
            f"{where} ({label}) has serializer {path!r}, which cannot be imported: {exc}.",
            hint="Give the dotted path of a rest_framework Serializer class.",
            id="dbevents.E003",
        )]
    from rest_framework.serializers import BaseSerializer

    if not (isinstance(cls, type) and issubclass(cls, BaseSerializer)):
        return [checks.Error(
            f"{where} ({label}) has serializer {path!r}, which is not a rest_framework serializer class.",
            hint="Point it at a subclass of rest_framework.serializers.Serializer.",
            id="dbevents.E003",
        )]
    return []


def publishing_checks() -> list[checks.CheckMessage]:
    """What publishing needs, whatever MODELS_CRUD_EVENT says (the relay publishes rows already
    in the outbox): a broker URI that parses, a transport that imports, valid DBEVENTS_* values."""
    errors: list[checks.CheckMessage] = []
    invalid = conf.problems()
    if "NAMEKO_CONFIG" in invalid:
        errors.append(checks.Error(
            f"{invalid['NAMEKO_CONFIG']}.",
            hint="Write NAMEKO_CONFIG = {'AMQP_URI': 'amqp://guest:guest@localhost:5672/'}.",
            id="dbevents.E007",
        ))
    elif conf.get("DBEVENTS_TRANSPORT") == "dbevents.transport.NamekoTransport" and not conf.nameko_config().get("AMQP_URI"):
        errors.append(checks.Error(
            "No AMQP_URI: neither NAMEKO_CONFIG['AMQP_URI'] nor settings.AMQP_URI is set.",
            hint="Set NAMEKO_CONFIG = {'AMQP_URI': 'amqp://user:password@host:5672/'} "
                 "('memory://' for an in-process broker).",
            id="dbevents.E007",
        ))
    for name, why in invalid.items():
        if name in ("MODELS_CRUD_EVENT", "NAMEKO_CONFIG", "SERVICE_NAME"):
            continue   # E001, E007 and E006 above say it in their own words
        errors.append(checks.Error(
            f"{why}.",
            hint=("'outbox' (the default) never loses an event; 'direct' publishes from memory (at-most-once)."
                  if name == "DBEVENTS_DELIVERY" else
                  f"Remove {name} to use the default {conf.DEFAULTS[name]!r}; until then dbevents uses the default."),
            id="dbevents.E014" if name == "DBEVENTS_DELIVERY" else "dbevents.E011",
        ))
    uri = conf.nameko_config().get("AMQP_URI")
    uri_problem = conf.uri_problem(uri) if uri else None
    if uri_problem:
        errors.append(checks.Error(
            f"{uri_problem}.",
            hint="The URI is not shown here because it holds a password. Until it is fixed no event is "
                 "published; the outbox keeps them.",
            id="dbevents.E015",
        ))
    try:
        from django.utils.module_loading import import_string

        import_string(conf.get("DBEVENTS_TRANSPORT"))
    except Exception as exc:
        errors.append(checks.Error(
            f"DBEVENTS_TRANSPORT is {conf.get('DBEVENTS_TRANSPORT')!r}, which cannot be imported: {exc}.",
            hint="Remove it to use 'dbevents.transport.NamekoTransport'.",
            id="dbevents.E016",
        ))
    return errors


@checks.register("dbevents")
def check_delivery(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """SERVICE_NAME, AMQP_URI, the DBEVENTS_* settings, and a capturing database."""
    entries, _ = _entries()
    errors: list[checks.CheckMessage] = []
    if not entries:
        return errors
    service = conf.get("SERVICE_NAME")
    if any(not e.get("service_name") for e in entries) and (not isinstance(service, str) or not service):
        errors.append(checks.Error(
            f"SERVICE_NAME is {service!r}, but MODELS_CRUD_EVENT has models without a 'service_name'.",
            hint="Set SERVICE_NAME = 'your_service' (events go to the '<SERVICE_NAME>.events' exchange).",
            id="dbevents.E006",
        ))
    errors += publishing_checks()
    import sqlite3

    if sqlite3.sqlite_version_info < (3, 35) and any(
        _vendor_of(a).requires_returning for a in _capturing_aliases()
    ):
        errors.append(checks.Error(
            f"SQLite {sqlite3.sqlite_version} has no RETURNING clause, which dbevents needs to capture writes on SQLite.",
            hint="Use a Python built with SQLite 3.35 or later (python -c 'import sqlite3; print(sqlite3.sqlite_version)').",
            id="dbevents.E012",
        ))
    if get_registry().entries and not _capturing_aliases():
        errors.append(checks.Warning(
            "MODELS_CRUD_EVENT registers models, but no database uses a dbevents ENGINE, so no events "
            f"will be produced (engines: {sorted({c.settings_dict['ENGINE'] for c in connections.all()})}).",
            hint="Set DATABASES['default']['ENGINE'] to 'dbevents.backends.postgresql', '.sqlite3' or '.mysql' "
                 "(or wrap your engine; see the README).",
            id="dbevents.W001",
        ))
    return errors


def configuration_errors() -> list[checks.CheckMessage]:
    """The errors of the dbevents checks (for the commands, which do not run the system checks),
    the publishing ones included even when no model is registered."""
    found = [*check_models(), *check_delivery()]
    seen = {(m.id, m.msg) for m in found}
    found += [m for m in publishing_checks() if (m.id, m.msg) not in seen]
    return [m for m in found if m.is_serious()]


def _vendor_of(alias: str) -> Any:
    """What capture knows of the database of ``alias`` (a dbevents engine's)."""
    capture: Any = connections[alias].dbevents  # type: ignore[attr-defined]
    return capture.vendor


def _capturing_aliases() -> list[str]:
    from dbevents.capture import CaptureMixin

    return [c.alias for c in connections.all() if isinstance(c, CaptureMixin)]


@checks.register(checks.Tags.database)
def check_outbox_tables(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """With ``--database`` (``migrate`` runs it): the outbox table exists where it is needed."""
    if not databases or not conf.outbox_enabled() or not get_registry().entries:
        return []
    from dbevents.relay import outbox_aliases

    warnings: list[checks.CheckMessage] = []
    for alias in outbox_aliases():
        if alias not in databases:
            continue
        if "dbevents_outbox" not in connections[alias].introspection.table_names():
            warnings.append(checks.Warning(
                f"Database {alias!r} has no dbevents_outbox table yet; until it has, its events are published "
                "directly (at-most-once), with an ERROR per transaction.",
                hint=f"Run: manage.py migrate dbevents --database={alias} (expected once, in the migrate that "
                     "creates it).",
                id="dbevents.W002",
            ))
    return warnings
