"""Throughput of one publisher connection against RabbitMQ per ``DBEVENTS_MAX_IN_FLIGHT`` (how
the default was picked; README "Delivery"). Usage: ``python -m bench.inflight [N]``; with
``BENCH_THROTTLE`` (bytes/s) the broker is reached through the test fault proxy, throttled.
Prints a Markdown table: in-flight bound, events/s (median of 3), duplicates/failures."""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.test import override_settings  # noqa: E402
from kombu import Connection, Exchange, Queue  # noqa: E402

from dbevents.events import Message  # noqa: E402
from dbevents.transport import NamekoTransport  # noqa: E402

URI = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")


def messages(service: str, n: int) -> list[Message]:
    body = b'{"id": 1, "name": "' + b"x" * 200 + b'"}'
    return [Message(service, "customer__created", body, "application/json", "utf-8",
                    {"dbevents.event_id": uuid.uuid4().hex, "dbevents.model": "shop.Customer", "dbevents.pk": i})
            for i in range(n)]


def one_run(uri: str, bound: int, n: int) -> tuple[float, int]:
    service = f"inflight_{uuid.uuid4().hex[:8]}"
    with Connection(URI) as conn:
        channel = conn.channel()
        exchange = Exchange(f"{service}.events", type="topic", durable=True, channel=channel)
        exchange.declare()
        queue = Queue(f"inflight-{service}", exchange=exchange, routing_key="#", channel=channel,
                      auto_delete=False, durable=False)
        queue.declare()
        try:
            with override_settings(NAMEKO_CONFIG={"AMQP_URI": uri}, DBEVENTS_MAX_IN_FLIGHT=bound):
                transport = NamekoTransport()
                transport.publish(messages(service, 10))   # connect and declare outside the timing
                batch = messages(service, n)
                started = time.perf_counter()
                result = transport.publish(batch)
                elapsed = time.perf_counter() - started
                transport.close()
            return n / elapsed, len(result.failed)
        finally:
            queue.delete()
            exchange.delete()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    throttle = os.environ.get("BENCH_THROTTLE")
    proxy = None
    uri = URI
    if throttle:
        from tests.faultproxy import FaultProxy

        proxy = FaultProxy().start()
        proxy.throttle(float(throttle), "upstream")
        uri = proxy.uri()
    print(f"{n} messages of ~300 bytes per run{', throttled to ' + throttle + ' B/s' if throttle else ''}\n")
    print("| DBEVENTS_MAX_IN_FLIGHT | events/s (median of 3) | failed |")
    print("|---:|---:|---:|")
    for bound in (20, 100, 500, 1000, 2000, 5000, 20000):
        runs = [one_run(uri, bound, n) for _ in range(3)]
        print(f"| {bound} | {statistics.median(r for r, _ in runs):,.0f} | {sum(f for _, f in runs)} |", flush=True)
    if proxy:
        proxy.stop()


if __name__ == "__main__":
    main()
