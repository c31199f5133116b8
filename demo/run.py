"""dbevents demo: every write to a registered model arrives at a broker as a nameko event.

A tiny Django project (``demo/settings.py``, app ``demo/shop``) on a fresh SQLite file writes
customers, orders and items. A kombu consumer bound to the ``shop.events`` exchange prints each
event as it arrives; every step checks that it received the events it should, so the demo exits
non-zero when dbevents misbehaves.

Run from the repository root::

    python demo/run.py                                                  # in-process broker
    AMQP_URI=amqp://guest:guest@127.0.0.1:5672/ python demo/run.py      # RabbitMQ
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kombu import Connection, Exchange, Queue
from kombu.message import Message
from kombu.utils.url import maybe_sanitize_url

DEMO_DIR = Path(__file__).resolve().parent
for path in (DEMO_DIR.parent, DEMO_DIR):  # the repository root (dbevents) and the demo project
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


class Consumer:
    """Sees every event the shop service publishes: an exclusive, auto-delete queue bound to the
    ``shop.events`` topic exchange with routing key ``#``."""

    def __init__(self, uri: str) -> None:
        self.connection = Connection(uri)
        self.connection.ensure_connection(max_retries=1)
        exchange = Exchange("shop.events", type="topic", durable=True)
        self.queue = Queue(
            f"dbevents-demo-{uuid.uuid4().hex[:8]}", exchange, routing_key="#",
            exclusive=True, auto_delete=True, channel=self.connection.channel(),
        )
        self.queue.declare()

    def drain(self, expected: int, timeout: float = 3.0) -> list[str]:
        """Print and return the names of the events waiting in the queue; polls up to
        ``timeout`` seconds while fewer than ``expected`` have arrived."""
        names: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.queue.get(no_ack=True)
            if message is not None:
                names.append(self.show(message))
            elif len(names) >= expected or time.monotonic() > deadline:
                return names
            else:
                time.sleep(0.05)

    @staticmethod
    def show(message: Message) -> str:
        """Print one received event: exchange, routing key (= event name), headers, payload."""
        info, headers = message.delivery_info, message.headers
        name: str = info["routing_key"]
        payload = json.dumps(message.decode())
        print(
            f"  <- {info['exchange']}  {name}  pk={headers['dbevents.pk']} "
            f"ordinal={headers['dbevents.ordinal']}/{headers['dbevents.transaction_size']}  {payload}"
        )
        return name

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.connection.release()


class Steps:
    """Numbered steps: each waits for the publisher, drains the consumer and checks the names."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.number = 0
        self.received = 0
        self.failures: list[str] = []

    def heading(self, text: str) -> None:
        self.number += 1
        print(f"\n{self.number}. {text}")

    def expect(self, expected: list[str]) -> None:
        from dbevents import publisher

        if not publisher.wait(10):
            print("  !! the publisher did not finish within 10 s")
        names = self.consumer.drain(len(expected))
        self.received += len(names)
        if not names:
            print("  (no events arrived)")
        if names != expected:
            self.failures.append(f"step {self.number}: expected {expected}, received {names}")
            print(f"  !! expected {expected}")


def run(consumer: Consumer) -> Steps:
    """The demo's writes. Imports Django models, so runs after ``django.setup()``."""
    from django.db import transaction
    from django.db.models import F
    from shop.models import Customer, Item, Order

    steps = Steps(consumer)

    steps.heading("Create a customer and an order with two items in one transaction.atomic(): "
                  "4 events, published after COMMIT")
    with transaction.atomic():
        ann = Customer.objects.create(name="Ann")
        order = Order.objects.create(customer=ann, number=1001)
        Item.objects.create(order=order, sku="TEA", qty=2)
        Item.objects.create(order=order, sku="CUP", qty=1)
    # Order has status_field="status": its events are named after the status, not the action.
    steps.expect(["customer__created", "order__new", "line__created", "line__created"])

    steps.heading("Pay the order with order.save(): status_field names the event order__paid")
    order.status = "paid"
    order.save()
    steps.expect(["order__paid"])

    steps.heading('Bulk update: Item.objects.filter(order=order).update(qty=F("qty") + 1) '
                  "-> one event per row")
    Item.objects.filter(order=order).update(qty=F("qty") + 1)
    steps.expect(["line__updated", "line__updated"])

    steps.heading("Create a customer, then raise inside transaction.atomic(): rolled back, nothing published")
    try:
        with transaction.atomic():
            Customer.objects.create(name="Bob")
            raise RuntimeError("payment declined")
    except RuntimeError:
        pass
    steps.expect([])
    if Customer.objects.filter(name="Bob").exists():
        steps.failures.append("step 4: the rolled-back customer exists")

    steps.heading("Delete the customer: the cascade deletes its order and items, one event per row")
    ann.delete()
    steps.expect(["line__deleted", "line__deleted", "order__deleted", "customer__deleted"])
    return steps


def main() -> int:
    uri = os.environ.get("AMQP_URI", "memory://")
    print(f"dbevents demo -- broker: {maybe_sanitize_url(uri)}"
          + ("  (kombu's in-process broker; set AMQP_URI to use RabbitMQ)" if uri.startswith("memory") else ""))

    try:
        consumer = Consumer(uri)
    except Exception as exc:
        print(f"cannot reach the broker {maybe_sanitize_url(uri)}: {exc}", file=sys.stderr)
        return 2
    print("consumer: exclusive queue bound to exchange shop.events with routing key '#'")

    with consumer, tempfile.TemporaryDirectory(prefix="dbevents-demo-") as tmp:
        os.environ["DBEVENTS_DEMO_DB"] = os.path.join(tmp, "demo.sqlite3")
        os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
        import django
        from django.core.management import call_command
        from django.db import connections

        django.setup()
        try:
            call_command("migrate", run_syncdb=True, verbosity=0)
            print(f"database: fresh SQLite file {os.environ['DBEVENTS_DEMO_DB']} (engine dbevents.backends.sqlite3)")
            steps = run(consumer)
        finally:
            connections.close_all()  # before the temporary directory goes

    if steps.failures:
        print(f"\nFAILED: {len(steps.failures)} step(s) did not receive the expected events:")
        for failure in steps.failures:
            print(f"  {failure}")
        return 1
    print(f"\nOK: {steps.received} events received in {steps.number} steps, each as expected.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
