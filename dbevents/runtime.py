"""Per-context runtime switches: muted models and event sinks installed by the testing helpers.

Both live in ``ContextVar``s, so they follow the thread or asyncio task that set them and never
leak into other requests. They are read on the capture path and must stay cheap: an empty tuple
means "nothing muted" / "no sink".
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dbevents.events import Event


@dataclass(frozen=True)
class Mute:
    """One active ``disable_dispatcher`` layer: every model (``labels is None``), some model
    labels (lower-cased ``app_label.modelname``), or some ``(label, pk)`` objects."""

    labels: frozenset[str] | None
    objects: frozenset[tuple[str, Any]] = frozenset()

    def mutes(self, label: str, pk: Any) -> bool:
        if self.objects:
            return (label, pk) in self.objects
        return self.labels is None or label in self.labels


class Sink(Protocol):
    """Receives the events of each committed transaction instead of (or as well as) the broker."""

    publish: bool

    def receive(self, events: list[Event]) -> None: ...


mutes: ContextVar[tuple[Mute, ...]] = ContextVar("dbevents_mutes", default=())
sinks: ContextVar[tuple[Sink, ...]] = ContextVar("dbevents_sinks", default=())


def is_muted(layers: tuple[Mute, ...], label: str, pk: Any) -> bool:
    """Whether any of ``layers`` (a snapshot of :data:`mutes`) mutes this row."""
    label = label.lower()
    return any(layer.mutes(label, pk) for layer in layers)


def mutes_everything(layers: tuple[Mute, ...], labels: tuple[str, ...]) -> bool:
    """Whether ``layers`` mute every row of every one of ``labels``, so capture can skip the
    statement altogether (object-level layers mute rows, never a whole model)."""

    def model_muted(label: str) -> bool:
        return any(
            not layer.objects and (layer.labels is None or label in layer.labels) for layer in layers
        )

    return all(model_muted(label.lower()) for label in labels)
