"""The one place that reads Django settings for dbevents: lazily, cached, reset by
``override_settings`` through the ``setting_changed`` signal.

Settings kept from django-events-sourcing: ``SERVICE_NAME``, ``NAMEKO_CONFIG``, ``AMQP_URI``,
``MODELS_CRUD_EVENT``. New ones are named ``DBEVENTS_*``; their defaults are in
:data:`DEFAULTS` and documented in the README's settings table.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

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
    # Seconds the publisher lets later transactions join a batch before publishing it (the
    # first waits at most this long): fewer, larger batches while transactions keep coming.
    "DBEVENTS_PUBLISH_LINGER": 0.005,
    # Outbox delivery: a transaction with more events than this writes them to the outbox in
    # chunks of this many while it runs (read back after COMMIT), so its memory stays bounded.
    "DBEVENTS_TRANSACTION_CHUNK": 10_000,
    # Publish with the AMQP "mandatory" flag, so that a message no queue is bound for is
    # returned by the broker and logged as an error instead of vanishing.
    "DBEVENTS_PUBLISH_MANDATORY": True,
    # Most published messages the broker has not confirmed yet, per connection. Past about a
    # thousand the throughput gain is nil (measured in the README) while a slow broker's TCP
    # back-pressure grows with it.
    "DBEVENTS_MAX_IN_FLIGHT": 1000,
    # Seconds sent data may stay unacknowledged by the broker's TCP stack before the connection
    # is declared dead (the socket's TCP_USER_TIMEOUT, Linux). None: DBEVENTS_CONFIRM_TIMEOUT.
    "DBEVENTS_TCP_USER_TIMEOUT": None,
}

DELIVERY_MODES = ("outbox", "direct")

SETTINGS = frozenset(DEFAULTS)
_RELOAD_HOOKS: list[Any] = []
logger = logging.getLogger("dbevents")


def _number(low: float, *, integer: bool = False, none: bool = False, above: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(value: Any) -> bool:
        if value is None:
            return none
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return False
        return value > low if above else value >= low

    kind = "an integer" if integer else "a number of seconds" if not above or low else "a number"
    bound = f"> {low:g}" if above else f">= {low:g}"
    return ok, f"{kind} {bound}" + (" or None" if none else "")


def _is(*kinds: type, none: bool = False, text: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: (v is None and none) or (isinstance(v, kinds) and not (bool not in kinds and isinstance(v, bool)))), text


# What each setting accepts: a predicate and the words for it. An invalid value is reported by
# the system checks (dbevents.E011) with these words and, at runtime, replaced by its default.
VALIDATORS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "SERVICE_NAME": (lambda v: v is None or (isinstance(v, str) and bool(v)), "a non-empty string"),
    "NAMEKO_CONFIG": _is(dict, none=True, text="a dict such as {'AMQP_URI': 'amqp://user:password@host:5672/'}"),
    "AMQP_URI": _is(str, none=True, text="an 'amqp://user:password@host:port/vhost' string"),
    "MODELS_CRUD_EVENT": _is(list, tuple, text='a list of dicts such as [{"model": "shop.Order"}]'),
    "DBEVENTS_ENABLED": _is(bool, text="True or False"),
    "DBEVENTS_PUBLISH_RETRIES": _number(1, integer=True),
    "DBEVENTS_PUBLISH_RETRY_DELAY": _number(0),
    "DBEVENTS_PUBLISH_RETRY_MAX_DELAY": _number(0),
    "DBEVENTS_CONNECT_TIMEOUT": _number(0, above=True),
    "DBEVENTS_QUEUE_SIZE": _number(1, integer=True),
    "DBEVENTS_SHUTDOWN_TIMEOUT": _number(0),
    "DBEVENTS_TRANSPORT": (lambda v: isinstance(v, str) and "." in v, "the dotted path of a transport class"),
    "DBEVENTS_DELIVERY": (lambda v: v in DELIVERY_MODES, " or ".join(map(repr, DELIVERY_MODES))),
    "DBEVENTS_OUTBOX_LEASE": _number(0, above=True),
    "DBEVENTS_OUTBOX_RETENTION": _number(0, none=True),
    "DBEVENTS_CONFIRM_TIMEOUT": _number(0, above=True),
    "DBEVENTS_PUBLISH_BATCH_SIZE": _number(1, integer=True),
    "DBEVENTS_TRANSACTION_CHUNK": _number(1, integer=True),
    "DBEVENTS_PUBLISH_LINGER": _number(0),
    "DBEVENTS_PUBLISH_MANDATORY": _is(bool, text="True or False"),
    "DBEVENTS_MAX_IN_FLIGHT": _number(1, integer=True),
    "DBEVENTS_TCP_USER_TIMEOUT": _number(0, none=True, above=True),
}

# Settings whose value never appears in a message (it may carry a password).
SECRET = frozenset({"AMQP_URI", "NAMEKO_CONFIG"})


def problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not valid for setting ``name`` (a sentence naming the value, unless it
    may hold a secret, and what is expected), or None when it is valid."""
    ok, expected = VALIDATORS[name]
    if ok(value):
        return None
    shown = f"of type {type(value).__name__}" if name in SECRET else repr(value)
    return f"{name} is {shown}; expected {expected}"


def problems() -> dict[str, str]:
    """Every set dbevents setting whose value is invalid, with :func:`problem`'s sentence (for
    the system checks; :func:`get` already hides these values behind their defaults)."""
    found = {}
    for name in DEFAULTS:
        why = problem(name, getattr(django_settings, name, DEFAULTS[name]))
        if why:
            found[name] = why
    return found


@functools.cache
def get(name: str) -> Any:
    """Return setting ``name``, or its default from :data:`DEFAULTS`. An invalid value (see
    :data:`VALIDATORS`) is logged once as an ERROR and replaced by the default, so a typo never
    crashes the publisher nor weakens the delivery guarantee."""
    if name not in DEFAULTS:
        raise KeyError(f"{name!r} is not a dbevents setting; known settings: {sorted(DEFAULTS)}")
    value = getattr(django_settings, name, DEFAULTS[name])
    why = problem(name, value)
    if why:
        logger.error("dbevents: %s; using the default %r instead (see manage.py check)", why, DEFAULTS[name])
        return DEFAULTS[name]
    return value


def nameko_config() -> dict[str, Any]:
    """The nameko config dict, with the top-level ``AMQP_URI`` filled in when NAMEKO_CONFIG has
    none (the django-events-sourcing 0.8 fallback)."""
    config = dict(get("NAMEKO_CONFIG") or {})
    if not config.get("AMQP_URI") and get("AMQP_URI"):
        config["AMQP_URI"] = get("AMQP_URI")
    return config


# Schemes kombu can connect with for nameko's AMQP_URI.
_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "memory", "librabbitmq"})


def uri_problem(uri: Any) -> str | None:
    """Why the broker URI ``uri`` cannot be used, in words that quote no part of it (it holds a
    password); None when it parses. A user name or password with an unescaped ``/``, ``#``,
    ``?`` or ``@`` makes the URI split in the wrong place: the fix is to percent-encode it."""
    encode = ("percent-encode the user name and password "
              "(urllib.parse.quote(password, safe='')), e.g. 'amqp://user:p%2Fss@host:5672/'")
    if not isinstance(uri, str):
        return f"AMQP_URI is of type {type(uri).__name__}; expected an 'amqp://user:password@host:port/vhost' string"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        return f"AMQP_URI cannot be parsed (its port is not a number, or a bracket is unbalanced); {encode}"
    if parts.scheme not in _SCHEMES:
        # The part before ':' is only quoted when it is plainly a scheme, never a user name.
        scheme = parts.scheme if parts.scheme and uri.lower().startswith(f"{parts.scheme}://") else ""
        return (f"AMQP_URI has {'scheme ' + repr(scheme) if scheme.isalnum() else 'no scheme'}; "
                f"expected one of {', '.join(sorted(_SCHEMES))} (e.g. 'amqp://user:password@host:5672/')")
    if parts.scheme == "memory":
        return None
    if not parts.hostname:
        return f"AMQP_URI has no host; expected 'amqp://user:password@host:port/vhost'; {encode}"
    if "@" in parts.path + parts.query + parts.fragment or parts.fragment:
        return f"AMQP_URI has characters after its host that belong in the password or user name; {encode}"
    return None


def _secrets() -> list[str]:
    """The strings no message may show: the broker URIs and their user-info, whole and in
    the pieces a parse error may quote."""
    uris = [get("AMQP_URI"), (get("NAMEKO_CONFIG") or {}).get("AMQP_URI")]
    found: set[str] = set()
    for uri in uris:
        if not isinstance(uri, str) or "://" not in uri:
            continue
        found.add(uri)
        rest = uri.split("://", 1)[1]
        if "@" in rest:
            info = rest.rsplit("@", 1)[0]
            password = info.split(":", 1)[1] if ":" in info else info
            found.update(piece for piece in re.split(r"[/#?@:]", password) + [password, info, unquote(password)]
                         if len(piece) >= 3)
    return sorted(found, key=len, reverse=True)


_USERINFO = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]*@")


def redact(text: str) -> str:
    """``text`` with the configured broker URIs' passwords, and any ``scheme://user:password@``,
    masked: for exception messages before they reach a log line, the outbox or ``dbevents_status``."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return _USERINFO.sub(r"\1***@", text)


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
