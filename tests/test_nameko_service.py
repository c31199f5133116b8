"""End to end: a REAL nameko service receives what dbevents publishes.

Starts ``nameko run tests.nameko_service.service`` against RabbitMQ (a fresh service name per
run), waits until its ``@event_handler`` queues have a consumer, then creates and updates a
Customer. The service writes every event it handles to a file; the test asserts it got
``customer__created`` and ``customer__updated`` with the exact serializer payloads -- i.e. the
exchange, routing keys and body format dbevents uses are the ones nameko consumes.

Every customer event published to ``test_service.events`` on the same broker (e.g. by a
concurrent run of this test) reaches the service too, so the customer gets a unique email and
only the events carrying it are checked.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import transaction
from django.test import override_settings
from kombu import Connection

from dbevents import publisher
from tests.shop.models import Customer

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS = {"customer__created": "on_created", "customer__updated": "on_updated"}


def _queue_names(service_name: str) -> list[str]:
    """The durable queues nameko declares for the service's event handlers."""
    return [f"evt-test_service-{event}--{service_name}.{method}" for event, method in HANDLERS.items()]


def _consumers(uri: str, queue: str) -> int:
    """How many consumers ``queue`` has; 0 when it does not exist yet."""
    with Connection(uri) as conn:
        try:
            return conn.default_channel.queue_declare(queue=queue, passive=True).consumer_count
        except conn.channel_errors:
            return 0


def _events(path: Path, email: str) -> list[dict]:
    """The events the service recorded for the customer with ``email``."""
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in lines if isinstance(e["payload"], dict) and e["payload"].get("email") == email]


def _wait_for(condition, timeout: float, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"nameko exited with {proc.returncode} while waiting for {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; nameko output:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.mark.nameko
@pytest.mark.django_db(transaction=True)
def test_nameko_service_receives_events(rabbitmq_uri, tmp_path):
    token = uuid.uuid4().hex[:12]
    service_name, email = f"dbevents_test_{token}", f"{token}@example.com"
    queues = _queue_names(service_name)
    output, log = tmp_path / "events.jsonl", tmp_path / "nameko.log"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        DBEVENTS_TEST_SERVICE_NAME=service_name,
        DBEVENTS_TEST_OUTPUT=str(output),
    )
    nameko = Path(sys.executable).with_name("nameko")
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(nameko), "run", "--broker", rabbitmq_uri, "tests.nameko_service.service"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: all(_consumers(rabbitmq_uri, q) for q in queues), 30, proc, "the service to consume", log)

        with override_settings(NAMEKO_CONFIG={"AMQP_URI": rabbitmq_uri}):
            with transaction.atomic():
                c = Customer.objects.create(name="Ann", email=email)
            c.name = "Anna"
            c.save()
            assert publisher.wait(30), "the dbevents publisher did not finish within 30 s"

        _wait_for(lambda: len(_events(output, email)) >= 2, 30, proc, "two events in the output file", log)
        # Two handlers consume two queues: the order between them is not defined.
        got = sorted(_events(output, email), key=lambda e: e["event"])
        assert got == [
            {"event": "customer__created", "payload": {"id": c.pk, "name": "Ann", "email": email}},
            {"event": "customer__updated", "payload": {"id": c.pk, "name": "Anna", "email": email}},
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for queue in queues:
            with Connection(rabbitmq_uri) as conn:
                try:
                    conn.default_channel.queue_delete(queue=queue)
                except conn.channel_errors:
                    pass
