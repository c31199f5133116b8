"""Testing helpers: mute events, and capture the events that would be published.

``disable_dispatcher`` and ``disable_model_obj_dispatcher`` keep the names and behaviour users
of django-events-sourcing know; unlike there, they touch no signals and affect only the thread
or task that activates them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from django.db import connections
from django.test.utils import TestContextDecorator

from dbevents import runtime
from dbevents.events import Event


class _Layer(TestContextDecorator):
    """Pushes a :class:`~dbevents.runtime.Mute` while active. Works as a class decorator (on a
    ``unittest.TestCase``: active for each test and its setUp/tearDown), a function decorator
    (sync or async) and a context manager; nests; state lives in a ContextVar."""

    mute: runtime.Mute

    def enable(self) -> None:
        runtime.mutes.set(runtime.mutes.get() + (self.mute,))

    def disable(self) -> None:
        layers = list(runtime.mutes.get())
        # Remove this decorator's most recent layer, wherever later ones stand.
        for i in range(len(layers) - 1, -1, -1):
            if layers[i] is self.mute:
                del layers[i]
                break
        runtime.mutes.set(tuple(layers))


class disable_dispatcher(_Layer):  # noqa: N801 -- the django-events-sourcing name
    """No events while active: for every model, or only for ``models_list``.

    ``models_list`` holds ``"app_label.ModelName"`` labels (case-insensitive); ``None`` or an
    empty list means every model. Statements run while muted produce no events, even if their
    transaction commits after the block ends::

        @disable_dispatcher()
        class ImportTests(TestCase): ...

        @disable_dispatcher(models_list=["shop.Order"])
        def test_something(): ...

        with disable_dispatcher():
            Order.objects.update(status="archived")
    """

    def __init__(self, models_list: Iterable[str] | None = None) -> None:
        labels = [m.lower() for m in models_list or []]
        self.mute = runtime.Mute(labels=frozenset(labels) if labels else None)
        super().__init__()


class disable_model_obj_dispatcher(_Layer):  # noqa: N801 -- the django-events-sourcing name
    """No events for the given saved objects (by model and primary key) while active::

        with disable_model_obj_dispatcher(order):
            order.save()          # no event
    """

    def __init__(self, *objs: Any) -> None:
        from dbevents.registry import get_registry

        registered = get_registry().entries
        keys: set[tuple[str, Any]] = set()
        for obj in objs:
            concrete = obj._meta.concrete_model
            # The object's own model, its concrete model, and registered proxies of that model:
            # whichever label the table's events go out under.
            labels = {obj._meta.label, concrete._meta.label}
            labels.update(m._meta.label for m in registered if m._meta.concrete_model is concrete)
            keys.update((label.lower(), obj.pk) for label in labels)
        self.mute = runtime.Mute(labels=frozenset(label for label, _ in keys), objects=frozenset(keys))
        super().__init__()


class CapturedEvents(list[Event]):
    """The events captured by :func:`capture_events`, in publication order (a list).

    Each item is an :class:`~dbevents.events.Event` with ``name``, ``service_name``,
    ``payload`` and ``headers``.
    """

    publish = False
    _collect: Any = None

    def receive(self, events: list[Event]) -> None:
        seen = {e.origin for e in self if e.origin}
        self.extend(e for e in events if not e.origin or e.origin not in seen)

    def collect(self) -> CapturedEvents:
        """Add the events of statements still waiting for a COMMIT that will never come (Django's
        ``TestCase``, pytest-django's ``db`` fixture) as they would be published; returns self.
        Done automatically when the ``capture_events`` block ends."""
        if self._collect is not None:
            self._collect()
        return self

    def names(self) -> list[str]:
        """The event names, in order: ``["order__created", "order__paid"]``."""
        return [e.name for e in self]

    def named(self, name: str) -> list[Event]:
        """The events called ``name``."""
        return [e for e in self if e.name == name]


class capture_events:  # noqa: N801 -- reads as a context manager
    """Collect, instead of publishing, the events committed while active::

        with capture_events() as events:
            Order.objects.create(number=1)
        assert events.names() == ["order__created"]

    Works in Django's ``TestCase`` too, whose transaction never commits: on exit, events of the
    statements run inside the block that are still waiting for a COMMIT are built and added as
    they would be published (they stay pending; if their transaction does commit later, they
    are published then). ``publish=True`` also sends them to the broker.

    The pytest fixture ``dbevents_events`` (see ``dbevents.pytest_plugin``) wraps a test in it.
    """

    def __init__(self, *, publish: bool = False, using: Iterable[str] | None = None) -> None:
        self.events = CapturedEvents()
        self.events.publish = publish
        self.using = list(using) if using is not None else None
        self._token: Any = None
        self._marks: dict[str, int] = {}

    def __enter__(self) -> CapturedEvents:
        self._marks = {conn.alias: conn.dbevents.pending.statement_no for conn in self._connections()}
        self._token = runtime.sinks.set(runtime.sinks.get() + (self.events,))
        self.events._collect = self._collect_pending
        return self.events

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                self._collect_pending()
        finally:
            self.events._collect = None
            runtime.sinks.reset(self._token)

    def _collect_pending(self) -> None:
        for conn in self._connections():
            capture = conn.dbevents
            if capture.pending.events and not conn.get_autocommit():
                self.events.receive(capture.prepare(peek=True, after=self._marks.get(conn.alias, 0)))

    def __call__(self, func: Any) -> Any:
        import functools

        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with capture_events(publish=self.events.publish, using=self.using) as events:
                return func(*args, events, **kwargs)

        return inner

    def _connections(self) -> Iterator[Any]:
        for conn in connections.all(initialized_only=True):
            if hasattr(conn, "dbevents") and (self.using is None or conn.alias in self.using):
                yield conn
