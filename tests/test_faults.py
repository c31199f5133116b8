"""Fault injection: a TCP proxy (tests/faultproxy.py) between dbevents and the real RabbitMQ cuts,
refuses or stalls the connection; a real consumer counts what arrives. Each scenario prints
events written / delivered / duplicates (``pytest -s`` shows them; the README quotes them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test import override_settings

from dbevents import publisher
from dbevents.models import OutboxMessage
from dbevents.relay import Relay
from dbevents.testing import capture_events
from tests.faultproxy import FaultProxy
from tests.shop.models import Customer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]
ROOT = Path(__file__).resolve().parent.parent
IN_MEMORY_SQLITE = connection.vendor == "sqlite"
needs_shared_database = pytest.mark.skipif(
    IN_MEMORY_SQLITE, reason="a relay in another process cannot open the in-memory SQLite test database "
                             "(the same relay code runs in-process in the other scenarios)",
)


@pytest.fixture
def proxy(rabbitmq_uri):
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(rabbitmq_uri)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as p:
        yield p


def via(proxy, **extra):
    return override_settings(NAMEKO_CONFIG={"AMQP_URI": proxy.uri()}, **extra)


def report(name, written, received):
    ids = [r.headers["dbevents.event_id"] for r in received]
    duplicates = len(ids) - len(set(ids))
    print(f"\n[{name}] {connection.vendor}: events written {written}, delivered {len(set(ids))}, "
          f"duplicates {duplicates}")
    return ids, duplicates


def commit_while_broker_refuses(proxy, n):
    """``n`` rows created in one transaction while the broker is unreachable: the fast path
    fails at once and hands the rows to the relay."""
    proxy.refuse()
    with via(proxy, DBEVENTS_PUBLISH_RETRIES=1), capture_events(publish=True) as events:
        started = time.monotonic()
        with transaction.atomic():
            Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(n)])
        elapsed = time.monotonic() - started
        assert publisher.wait(60)
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == n
    OutboxMessage.objects.update(available_at=None)   # skip the first back-off
    proxy.accept()
    return events, elapsed


def test_broker_unreachable_at_commit_relay_delivers_every_event_once(broker, proxy):
    events, elapsed = commit_while_broker_refuses(proxy, 300)
    assert elapsed < 2.0, "the committing request was not blocked by the broker"
    assert broker.drain() == []
    with via(proxy):
        Relay([connection.alias], batch_size=100).run(once=True)
    ids, duplicates = report("broker unreachable at commit", len(events), broker.drain())
    assert ids == [e.id for e in events] and duplicates == 0
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


@pytest.mark.parametrize("delivery", ["outbox", "direct"])
def test_connection_cut_in_the_middle_of_a_batch(broker, proxy, delivery):
    with via(proxy, DBEVENTS_DELIVERY=delivery):
        Customer.objects.create(name="warm-up")   # connection open, exchange declared
        assert publisher.wait(30)
        broker.drain()
        proxy.cut_after(300_000)   # about a third of the batch's frames
        with capture_events(publish=True) as events:
            with transaction.atomic():
                customers = Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(1000)])
                Customer.objects.filter(pk__in=[c.pk for c in customers]).update(name="second")
        assert publisher.wait(60)
    assert proxy.cuts == 1
    received = broker.drain()
    ids, duplicates = report(f"connection cut mid-batch ({delivery})", len(events), received)
    assert set(ids) == {e.id for e in events}
    assert duplicates <= len(events)
    # Per row, the first copy of each event arrives in commit order: created, then updated.
    first_seen: dict[int, list[str]] = {}
    seen = set()
    for r in received:
        if r.headers["dbevents.event_id"] not in seen:
            seen.add(r.headers["dbevents.event_id"])
            first_seen.setdefault(r.pk, []).append(r.action)
    assert all(actions == ["created", "updated"] for actions in first_seen.values())
    assert len(first_seen) == 1000
    if delivery == "outbox":
        assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


def test_stalled_broker_never_blocks_the_request_and_loses_nothing(broker, proxy):
    with via(proxy, DBEVENTS_CONFIRM_TIMEOUT=0.5, DBEVENTS_PUBLISH_RETRIES=1):
        Customer.objects.create(name="warm-up")
        assert publisher.wait(30)
        broker.drain()
        proxy.stall()
        with capture_events(publish=True) as events:
            started = time.monotonic()
            with transaction.atomic():
                Customer.objects.bulk_create([Customer(name=f"s{i}") for i in range(50)])
            assert time.monotonic() - started < 1.0
        assert publisher.wait(30)   # gave up after the confirm timeout: rows left to the relay
        proxy.resume()
        proxy.cut()
        OutboxMessage.objects.update(available_at=None)
        Relay([connection.alias]).run(once=True)
    ids, duplicates = report("stalled broker", len(events), broker.drain())
    assert set(ids) == {e.id for e in events} and duplicates <= len(events)
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


def relay_process(uri, *args, env=None):
    env = {
        **os.environ,
        **(env or {}),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DBEVENTS_TEST_DB": connection.vendor,
        "DBEVENTS_TEST_DB_NAME": connection.settings_dict["NAME"],
        "DBEVENTS_TEST_RELAY_AMQP_URI": uri,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "django", "dbevents_relay", "--database", "default", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_until_some_arrive(broker, process, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.channel.queue_declare(broker.queue.name, passive=True).message_count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.002)
    process.kill()
    out, err = process.communicate()
    pending = OutboxMessage.objects.filter(sent_at__isnull=True).count()
    raise AssertionError(f"the relay published nothing in {timeout:.0f}s ({pending} rows pending); "
                         f"its output: {out[-2000:]} {err[-3000:]}")


def interrupt_relay_mid_run(broker, uri, worker, batch_size, signum):
    """Start a relay, send it ``signum`` as soon as its first events reach the consumer, and
    return its (stdout, stderr) and exit code."""
    relay = relay_process(uri, "--worker-id", worker, "--batch-size", str(batch_size))
    wait_until_some_arrive(broker, relay)
    relay.send_signal(signum)
    out, err = relay.communicate(timeout=30)
    return out, err, relay.returncode


def leased_to(worker):
    return OutboxMessage.objects.filter(sent_at__isnull=True, lease_owner__startswith=f"{worker}:")


@needs_shared_database
def test_relay_killed_mid_batch_a_restarted_relay_finishes(broker, proxy, rabbitmq_uri):
    events, _ = commit_while_broker_refuses(proxy, 20_000)
    interrupt_relay_mid_run(broker, rabbitmq_uri, "relay-a", 2000, signal.SIGKILL)
    assert leased_to("relay-a").exists(), "the relay was not killed in the middle of a batch"
    restarted = relay_process(rabbitmq_uri, "--worker-id", "relay-a", "--batch-size", "2000", "--once")
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    ids, duplicates = report("relay killed with SIGKILL mid-batch", len(events), broker.drain())
    assert set(ids) == {e.id for e in events}
    assert duplicates <= 2000   # at most the batch in flight when it was killed
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


@needs_shared_database
def test_two_relays_at_once_publish_no_event_twice(broker, proxy, rabbitmq_uri):
    events, _ = commit_while_broker_refuses(proxy, 6000)
    relays = [relay_process(rabbitmq_uri, "--worker-id", f"relay-{i}", "--batch-size", "200", "--once")
              for i in range(2)]
    outputs = [r.communicate(timeout=120) for r in relays]
    assert [r.returncode for r in relays] == [0, 0], outputs
    published = [int(out.rsplit("published ", 1)[1].split(" ")[0]) for out, _ in outputs]
    ids, duplicates = report("two relays at once", len(events), broker.drain())
    assert sorted(ids) == sorted(e.id for e in events) and duplicates == 0
    assert sum(published) == len(events) and all(published), published


@needs_shared_database
def test_relay_stops_cleanly_on_sigterm(broker, proxy, rabbitmq_uri):
    events, _ = commit_while_broker_refuses(proxy, 20_000)
    out, err, code = interrupt_relay_mid_run(broker, rabbitmq_uri, "relay-t", 1000, signal.SIGTERM)
    assert code == 0, err
    assert "SIGTERM, finishing the batch in hand" in err and "stopped; published" in out
    # It finished its batch: nothing stays leased to it.
    assert not leased_to("relay-t").exists()
    finisher = relay_process(rabbitmq_uri, "--once")
    assert finisher.wait(120) == 0
    ids, duplicates = report("relay stopped with SIGTERM", len(events), broker.drain())
    assert Counter(ids).keys() == {e.id for e in events} and duplicates == 0


def test_a_throttled_broker_gets_every_event_once_with_a_bounded_window(broker, proxy, monkeypatch):
    """A slow broker pushes back through TCP: the connection must survive it (py-amqp's 1 s
    TCP_USER_TIMEOUT did not), and no more than DBEVENTS_MAX_IN_FLIGHT messages are unconfirmed."""
    import socket as socket_module

    from dbevents.transport import NamekoTransport

    peaks: list[int] = []
    original = NamekoTransport._wait_for_confirms

    def watched(self, down_to=0):
        peaks.append(len(self._outstanding))
        return original(self, down_to)

    monkeypatch.setattr(NamekoTransport, "_wait_for_confirms", watched)
    with via(proxy, DBEVENTS_MAX_IN_FLIGHT=200, DBEVENTS_CONFIRM_TIMEOUT=5.0):
        Customer.objects.create(name="warm-up")
        assert publisher.wait(30)
        broker.drain()
        transport = publisher.current()._delivery._sender._transport
        sock = transport.connection.connection.transport.sock
        if hasattr(socket_module, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_USER_TIMEOUT) == 5000
        proxy.throttle(150_000)   # bytes/s to the broker: 3,000 events take about 8 s
        with capture_events(publish=True) as events:
            with transaction.atomic():
                Customer.objects.bulk_create([Customer(name=f"t{i}") for i in range(3000)])
            assert publisher.wait(120)
        proxy.throttle(None)
    ids, duplicates = report("throttled broker", len(events), broker.drain())
    assert sorted(ids) == sorted(e.id for e in events) and duplicates == 0
    assert proxy.connections_accepted == 1, "the connection was dropped under back-pressure"
    assert peaks and max(peaks) <= 200
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


def test_a_stalled_publish_fails_within_one_confirm_timeout(broker, proxy, caplog):
    from dbevents.transport import Sender

    with via(proxy, DBEVENTS_CONFIRM_TIMEOUT=1.5):
        sender = Sender()
        with capture_events() as events:
            Customer.objects.bulk_create([Customer(name=f"s{i}") for i in range(50)])
        from dbevents.events import encode

        messages = encode(events)
        assert sender.publish(messages[:1]).confirmed   # connected, exchange declared
        proxy.stall()
        started = time.monotonic()
        result = sender.publish(messages[1:])
        elapsed = time.monotonic() - started
        proxy.resume()
    assert len(result.failed) == 49 and isinstance(result.error, TimeoutError)
    assert str(result.error) == ("the broker confirmed none of 49 outstanding message(s) for 1.5s "
                                 "(DBEVENTS_CONFIRM_TIMEOUT)")
    # One confirm timeout, not two (the close after it does not wait for the stalled broker).
    assert elapsed < 1.5 * 1.6, elapsed


@needs_shared_database
def test_sigterm_during_a_stall_stops_the_relay_within_a_confirm_timeout(broker, proxy):
    events, _ = commit_while_broker_refuses(proxy, 5000)
    relay = relay_process(proxy.uri(), "--worker-id", "relay-s", "--batch-size", "1000",
                          env={"DBEVENTS_TEST_CONFIRM_TIMEOUT": "4"})
    wait_until_some_arrive(broker, relay)
    proxy.stall()   # mid-batch: the broker confirms nothing more
    time.sleep(0.5)
    started = time.monotonic()
    relay.send_signal(signal.SIGTERM)
    out, err = relay.communicate(timeout=60)
    stopped_after = time.monotonic() - started
    proxy.resume()
    assert relay.returncode == 0, err
    # The confirm wait in hand ends after one DBEVENTS_CONFIRM_TIMEOUT (4 s), and nothing waits
    # for the stalled broker after it (closing used to wait another read timeout).
    assert stopped_after < 4 * 1.6, (stopped_after, err)
    assert not leased_to("relay-s").exists()
    finisher = relay_process(proxy.uri(), "--once")
    assert finisher.wait(120) == 0
    ids, duplicates = report("relay stopped with SIGTERM during a stall", len(events), broker.drain())
    assert set(ids) == {e.id for e in events} and duplicates <= 1000
