"""Test fixtures: the database under test, a RabbitMQ consumer, and service checks.

With CI=true an unreachable PostgreSQL, MariaDB or RabbitMQ fails the run; elsewhere the tests
that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

pytest_plugins = ["dbevents.pytest_plugin"]

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def service_unavailable(name: str, host: str, port: int) -> None:
    """Fail (CI) or skip (elsewhere) when a server the test needs is down."""
    message = f"service unavailable: {name} at {host}:{port}"
    if CI:
        pytest.fail(f"{message} (CI=true makes service-backed tests mandatory)")
    pytest.skip(message)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return
    host, port = db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 0)
    if not _reachable(host, port):
        name = "PostgreSQL" if "postgresql" in db["ENGINE"] else "MariaDB"
        if CI:
            raise pytest.UsageError(f"service unavailable: {name} at {host}:{port} (CI=true)")
        skip = pytest.mark.skip(reason=f"service unavailable: {name} at {host}:{port}")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _publisher_lets_go_of_the_test_database(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """The publisher thread marks outbox rows on connections of its own; they must be closed
    before the test database is dropped."""
    yield
    from dbevents import publisher

    publisher.wait(30)
    publisher.current().release_connections()


@pytest.fixture(autouse=True)
def _publisher_done_after_each_test() -> Any:
    """Events a test committed are published (or given up on) before the next test changes the
    settings: no test sees another's events."""
    yield
    from dbevents import publisher

    publisher.wait(30)


@pytest.fixture
def rabbitmq_uri() -> str:
    """The RabbitMQ URI; fails or skips when the broker is down."""
    from kombu.utils.url import url_to_parts

    uri = settings.AMQP_URI_RABBITMQ
    parts = url_to_parts(uri)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if not _reachable(host, port):
        service_unavailable("RabbitMQ", host, port)
    return uri


class Consumer:
    """A queue bound to ``<service>.events`` with ``#``: sees every event the services publish."""

    def __init__(self, uri: str, services: list[str]) -> None:
        from kombu import Connection, Exchange, Queue

        self.connection = Connection(uri)
        self.channel = self.connection.channel()
        self.queue = Queue(f"dbevents-test-{uuid.uuid4().hex}", exclusive=True, auto_delete=True, channel=self.channel)
        self.queue.declare()
        for service in services:
            exchange = Exchange(f"{service}.events", type="topic", durable=True, channel=self.channel)
            exchange.declare()
            self.queue.bind_to(exchange, routing_key="#")
        self.received: list[Any] = []
        self.service = services[0]

    def drain(self) -> list[Any]:
        """Everything published so far (waits for the publisher thread to finish first)."""
        from dbevents import publisher

        assert publisher.wait(30), "the dbevents publisher did not finish within 30 s"
        while True:
            message = self.queue.get(no_ack=True)
            if message is None:
                break
            self.received.append(Received(message))
        out, self.received = self.received, []
        return out

    def close(self) -> None:
        try:
            self.queue.delete()
        finally:
            self.connection.release()


class Received:
    """One message as a nameko consumer would see it."""

    def __init__(self, message: Any) -> None:
        self.name = message.delivery_info["routing_key"]
        self.exchange = message.delivery_info["exchange"]
        self.payload = message.decode()
        self.headers = message.headers
        self.properties = message.properties
        self.content_type = message.content_type

    @property
    def action(self) -> str:
        return self.headers["dbevents.action"]

    @property
    def pk(self) -> Any:
        return self.headers["dbevents.pk"]

    def __repr__(self) -> str:
        return f"<{self.exchange}/{self.name} {self.payload}>"


@pytest.fixture
def broker(rabbitmq_uri: str) -> Any:
    """Publish to the real RabbitMQ and consume what arrives: ``broker.drain()``.

    SERVICE_NAME is made unique (``broker.service``) so concurrent runs on one broker never see
    each other's events."""
    from dbevents import publisher

    service = f"test_service_{uuid.uuid4().hex[:8]}"
    with override_settings(NAMEKO_CONFIG={"AMQP_URI": rabbitmq_uri}, SERVICE_NAME=service):
        consumer = Consumer(rabbitmq_uri, [service, "billing"])
        consumer.service = service
        try:
            yield consumer
            publisher.wait(30)
        finally:
            consumer.channel.exchange_delete(f"{service}.events")
            consumer.close()


def names(received: list[Any]) -> list[str]:
    """The event names of received messages, in order."""
    return [r.name for r in received]
