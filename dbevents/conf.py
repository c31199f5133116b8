"""The one place that reads Django settings for dbevents: lazily, cached, reset by
``override_settings`` through the ``setting_changed`` signal.

Settings kept from django-events-sourcing: ``SERVICE_NAME``, ``NAMEKO_CONFIG``, ``AMQP_URI``,
``MODELS_CRUD_EVENT``. New ones are named ``DBEVENTS_*``; their defaults are in
:data:`DEFAULTS` and documented in the README's settings table.
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Legacy names (django-events-sourcing 0.7/0.8).
    "SERVICE_NAME": None,
    "NAMEKO_CONFIG": {},
    "AMQP_URI": None,
    "MODELS_CRUD_EVENT": [],
    # Master switch: False records nothing and publishes nothing.
    "DBEVENTS_ENABLED": True,
    # Attempts to publish one batch before its events are logged as lost.
    "DBEVENTS_PUBLISH_RETRIES": 5,
    # Seconds before the first retry; doubled each time, capped at DBEVENTS_PUBLISH_RETRY_MAX_DELAY.
    "DBEVENTS_PUBLISH_RETRY_DELAY": 0.5,
    "DBEVENTS_PUBLISH_RETRY_MAX_DELAY": 10.0,
    # Seconds to wait for the broker when connecting.
    "DBEVENTS_CONNECT_TIMEOUT": 5.0,
    # Events waiting in memory for the publisher thread; beyond it new batches are logged as lost.
    "DBEVENTS_QUEUE_SIZE": 100_000,
    # Seconds the process waits at exit for queued events to be published.
    "DBEVENTS_SHUTDOWN_TIMEOUT": 10.0,
    # Dotted path of the transport class (see dbevents.transport.Transport).
    "DBEVENTS_TRANSPORT": "dbevents.transport.NamekoTransport",
    # "outbox": events are written to the dbevents_outbox table in the data's own transaction and
    # published from there (at-least-once). "direct": published from memory after COMMIT
    # (at-most-once; failures are logged with the event ids).
    "DBEVENTS_DELIVERY": "outbox",
    # Seconds the committing process (or a relay) owns the outbox rows it is publishing before a
    # relay may take them over.
    "DBEVENTS_OUTBOX_LEASE": 60.0,
    # Seconds sent outbox rows are kept before dbevents_relay deletes them (None: keep them).
    "DBEVENTS_OUTBOX_RETENTION": 7 * 24 * 3600.0,
    # Seconds to wait for the broker to confirm a batch of messages.
    "DBEVENTS_CONFIRM_TIMEOUT": 10.0,
    # Most messages published as one pipelined batch (one wait for their confirms).
    "DBEVENTS_PUBLISH_BATCH_SIZE": 5000,
    # Publish with the AMQP "mandatory" flag, so that a message no queue is bound for is
    # returned by the broker and logged as an error instead of vanishing.
    "DBEVENTS_PUBLISH_MANDATORY": True,
}

DELIVERY_MODES = ("outbox", "direct")

SETTINGS = frozenset(DEFAULTS)
_RELOAD_HOOKS: list[Any] = []


@functools.cache
def get(name: str) -> Any:
    """Return setting ``name``, or its default from :data:`DEFAULTS`."""
    if name not in DEFAULTS:
        raise KeyError(f"{name!r} is not a dbevents setting; known settings: {sorted(DEFAULTS)}")
    return getattr(django_settings, name, DEFAULTS[name])


def nameko_config() -> dict[str, Any]:
    """The nameko config dict, with the top-level ``AMQP_URI`` filled in when NAMEKO_CONFIG has
    none (the django-events-sourcing 0.8 fallback)."""
    config = dict(get("NAMEKO_CONFIG") or {})
    if not config.get("AMQP_URI") and get("AMQP_URI"):
        config["AMQP_URI"] = get("AMQP_URI")
    return config


def outbox_enabled() -> bool:
    """Whether events go through the transactional outbox (``DBEVENTS_DELIVERY = "outbox"``)."""
    return bool(get("DBEVENTS_ENABLED")) and get("DBEVENTS_DELIVERY") == "outbox"


def on_reload(func: Any) -> Any:
    """Register ``func`` to run when any dbevents setting changes (caches built from settings)."""
    _RELOAD_HOOKS.append(func)
    return func


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in SETTINGS:
        get.cache_clear()
        for hook in _RELOAD_HOOKS:
            hook()
