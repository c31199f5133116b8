"""The counting consumer: a separate process (so its work does not weigh on the timed process)
with a queue bound to ``<service>.events`` by ``#``. It counts messages per routing key, checks
``dbevents.event_id`` uniqueness, and notes when the last message arrived (``time.monotonic()``,
comparable across processes on Linux). Driven over a pipe by :class:`Consumer`."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from typing import Any

EVENT_ID = "dbevents.event_id"


def _serve(pipe: Any, uri: str, service: str, auto_delete_exchange: bool) -> None:
    from kombu import Connection, Exchange, Queue

    exchange = Exchange(f"{service}.events", type="topic", durable=True, auto_delete=auto_delete_exchange)
    queue = Queue(f"{service}.bench-consumer", exchange=exchange, routing_key="#",
                  exclusive=True, auto_delete=True, durable=False)
    state: dict[str, Any] = {}
    seen: set[str] = set()

    def reset() -> None:
        state.update(count=0, keys=Counter(), dups=0, without_id=0, last=None)
        seen.clear()

    def on_message(message: Any) -> None:
        state["count"] += 1
        state["keys"][message.delivery_info.get("routing_key")] += 1
        state["last"] = time.monotonic()
        event_id = (message.headers or {}).get(EVENT_ID)
        if event_id is None:
            state["without_id"] += 1
        elif event_id in seen:
            state["dups"] += 1
        else:
            seen.add(event_id)

    reset()
    with Connection(uri) as conn:
        channel = conn.channel()
        exchange(channel).declare()
        bound = queue(channel)
        bound.declare()
        consumer = conn.Consumer(bound, no_ack=True, on_message=on_message)
        consumer.consume()
        pipe.send("ready")
        while True:
            try:
                conn.drain_events(timeout=0.02)
                continue
            except TimeoutError:
                pass
            while pipe.poll():
                cmd = pipe.recv()
                if cmd == "snapshot":
                    # Drain what already arrived first, so a snapshot is never stale.
                    while True:
                        try:
                            conn.drain_events(timeout=0.01)
                        except TimeoutError:
                            break
                    pipe.send({**state, "keys": dict(state["keys"])})
                elif cmd == "reset":
                    reset()
                    pipe.send("ok")
                elif cmd == "stop":
                    consumer.cancel()
                    if not auto_delete_exchange:
                        try:
                            exchange(channel).delete()
                        except Exception:  # noqa: BLE001 -- best effort cleanup of a per-run exchange
                            pass
                    pipe.send("stopped")
                    return


class Consumer:
    """A consumer process counting the events of ``service``."""

    def __init__(self, uri: str, service: str, auto_delete_exchange: bool = False) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, uri, service, auto_delete_exchange), daemon=True)
        self._proc.start()
        if not self._pipe.poll(30):
            raise RuntimeError(f"the bench consumer did not start (RabbitMQ at {uri} reachable?)")
        self._pipe.recv()

    def _ask(self, cmd: str) -> Any:
        self._pipe.send(cmd)
        if not self._pipe.poll(60):
            raise RuntimeError(f"the bench consumer did not answer {cmd!r}")
        return self._pipe.recv()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self._ask("reset")

    def snapshot(self) -> dict[str, Any]:
        """``count``, ``keys`` (routing key -> count), ``dups``, ``without_id``, ``last``."""
        return self._ask("snapshot")

    def wait_for(self, expected: int, timeout: float) -> dict[str, Any]:
        """Poll until ``expected`` messages were counted or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if snap["count"] >= expected or time.monotonic() > deadline:
                return snap
            time.sleep(0.02)

    def stop(self) -> None:
        try:
            self._ask("stop")
        finally:
            self._proc.join(10)
