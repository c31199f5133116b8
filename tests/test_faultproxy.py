"""The fault-injection proxy of tests/faultproxy.py: against a local echo server, then kombu to RabbitMQ."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.faultproxy import FaultProxy

TIMEOUT = 5.0


class Record:
    """What the echo server saw on one connection."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.end: str | None = None  # "eof", "reset" or another error, once the connection ended


class EchoServer:
    """Sends back everything it receives; closes after the client's FIN. One thread per connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.records: list[Record] = []
        self.changed = threading.Condition()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept, name="echo-accept")

    def start(self) -> EchoServer:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        socket.create_connection(self.address, timeout=TIMEOUT).close()  # wakes accept()
        self._acceptor.join(TIMEOUT)
        with self.changed:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(TIMEOUT)
        self.listener.close()
        assert not any(t.is_alive() for t in [self._acceptor, *self._threads]), "echo server threads left running"

    def wait_for(self, predicate: Callable[[], bool]) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, TIMEOUT)

    def ended(self) -> list[Record]:
        return [r for r in self.records if r.end is not None]

    def _accept(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            if self._stopping:
                sock.close()
                return
            thread = threading.Thread(target=self._serve, args=(sock,), name="echo-connection")
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        record = Record()
        with self.changed:
            self.records.append(record)
            self._sockets.add(sock)
            self.changed.notify_all()
        end = "eof"
        try:
            while data := sock.recv(65536):
                with self.changed:
                    record.received += data
                    self.changed.notify_all()
                sock.sendall(data)
        except ConnectionResetError:
            end = "reset"
        except OSError as error:
            end = repr(error)
        finally:
            with self.changed:
                self._sockets.discard(sock)
                sock.close()
                record.end = end
                self.changed.notify_all()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.stop()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=echo.address) as proxy:
        yield proxy


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=TIMEOUT)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return recv_exactly(sock, len(data))


def read_to_end(sock: socket.socket) -> tuple[bytes, type[BaseException] | None]:
    """Everything until EOF (error None) or until the error that ended the connection."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as error:
        return bytes(data), type(error)
    return bytes(data), None


def payload(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def test_forwards_both_ways_and_counts(proxy: FaultProxy, echo: EchoServer) -> None:
    data = payload(300_000)  # more than one socket buffer: exercises partial writes
    clients = [connect(proxy) for _ in range(3)]
    for client in clients:
        assert exchange(client, data) == data
    total = 3 * len(data)
    assert proxy.wait_for(lambda p: p.bytes_upstream == total and p.bytes_downstream == total)
    assert proxy.connections_accepted == 3
    assert proxy.active_connections == 3
    assert proxy.cuts == 0
    for client in clients:
        client.close()
    assert proxy.wait_for(lambda p: p.active_connections == 0)
    assert echo.wait_for(lambda: [r.end for r in echo.records] == ["eof"] * 3)


def test_half_close_is_passed_on(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as client:
        client.sendall(b"last words")
        client.shutdown(socket.SHUT_WR)
        # The echo server only closes after the FIN: the reply and then a clean EOF come back.
        assert read_to_end(client) == (b"last words", None)
    assert echo.wait_for(lambda: [r.end for r in echo.records] == ["eof"])
    assert proxy.wait_for(lambda p: p.active_connections == 0)


def test_cut_resets_open_connections_and_keeps_accepting(proxy: FaultProxy, echo: EchoServer) -> None:
    first, second = connect(proxy), connect(proxy)
    assert exchange(first, b"one") == b"one"
    assert exchange(second, b"two") == b"two"

    proxy.cut()

    for client in (first, second):
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        client.close()
    assert echo.wait_for(lambda: [r.end for r in echo.records] == ["reset", "reset"])
    assert proxy.cuts == 1
    assert proxy.active_connections == 0
    with connect(proxy) as third:
        assert exchange(third, b"three") == b"three"
    assert proxy.connections_accepted == 3


def test_refuse_then_accept_on_the_same_port(proxy: FaultProxy, echo: EchoServer) -> None:
    port = proxy.port
    client = connect(proxy)
    assert exchange(client, b"before") == b"before"

    proxy.refuse()

    with pytest.raises(ConnectionResetError):
        client.recv(10)
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=TIMEOUT)
    assert proxy.connections_accepted == 1
    assert echo.wait_for(lambda: [r.end for r in echo.records] == ["reset"])

    proxy.accept()

    assert proxy.port == port
    with connect(proxy) as client:
        assert exchange(client, b"after") == b"after"
    assert proxy.connections_accepted == 2


def test_stall_holds_bytes_until_resume(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as client:
        assert exchange(client, b"ping") == b"ping"
        upstream_before = proxy.bytes_upstream

        proxy.stall()

        client.sendall(b"held back")
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):  # a client waiting for a reply hangs until its own timeout
            client.recv(100)
        assert proxy.bytes_upstream == upstream_before
        assert bytes(echo.records[0].received) == b"ping"
        assert proxy.active_connections == 1

        proxy.resume()

        client.settimeout(TIMEOUT)
        assert recv_exactly(client, len(b"held back")) == b"held back"
        assert exchange(client, b"pong") == b"pong"


def test_throttle_bounds_the_rate_and_lifting_it_delivers_the_rest(proxy: FaultProxy, echo: EchoServer) -> None:
    import threading
    import time

    data = payload(400_000)
    rate = 100_000
    with connect(proxy) as client:
        proxy.throttle(rate)
        started = time.monotonic()
        sender = threading.Thread(target=client.sendall, args=(data,))
        sender.start()
        time.sleep(0.5)
        forwarded, elapsed = proxy.bytes_upstream, time.monotonic() - started
        # Never more than the rate allows (plus one tenth of a second's burst); and it moves.
        assert 0 < forwarded <= rate * elapsed + rate / 10
        proxy.throttle(None)
        assert recv_exactly(client, len(data)) == data
        sender.join(TIMEOUT)


def test_cut_while_stalled(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        assert exchange(client, b"ping") == b"ping"
        proxy.stall()
        client.sendall(b"never forwarded")
        proxy.cut()
        assert read_to_end(client) == (b"", ConnectionResetError)
    proxy.resume()
    with connect(proxy) as client:
        assert exchange(client, b"again") == b"again"


def test_cut_after_upstream_bytes_splits_a_batch(proxy: FaultProxy, echo: EchoServer) -> None:
    client = connect(proxy)
    assert exchange(client, b"x" * 100) == b"x" * 100

    proxy.cut_after(250)

    batch = payload(500)
    reset_while_sending = False
    try:
        for i in range(0, len(batch), 100):  # a batch of five "publishes"
            client.sendall(batch[i : i + 100])
    except ConnectionResetError:   # the reset can reach the client before its last sends
        reset_while_sending = True
    echoed, error = read_to_end(client)
    client.close()
    assert error is ConnectionResetError or reset_while_sending
    assert batch[:250].startswith(echoed)
    assert echo.wait_for(lambda: len(echo.ended()) == 1)
    assert bytes(echo.records[0].received) == b"x" * 100 + batch[:250]
    assert echo.records[0].end == "reset"
    assert proxy.bytes_upstream == 350
    assert proxy.cuts == 1
    # One-shot: the next connection is forwarded normally.
    with connect(proxy) as client:
        assert exchange(client, payload(1000)) == payload(1000)
    assert proxy.cuts == 1


def test_cut_after_downstream_bytes(proxy: FaultProxy, echo: EchoServer) -> None:
    data = payload(2000)
    with connect(proxy) as client:
        proxy.cut_after(500, direction="downstream")
        client.sendall(data)
        assert read_to_end(client) == (data[:500], ConnectionResetError)
    assert proxy.bytes_downstream == 500
    assert proxy.cuts == 1
    assert echo.wait_for(lambda: len(echo.ended()) == 1)


def test_cut_after_checks_its_arguments(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.cut_after(10, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        proxy.cut_after(-1)


def test_unreachable_upstream_resets_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]
    with FaultProxy(upstream=("127.0.0.1", closed_port)) as proxy:
        try:
            with connect(proxy) as client:
                assert read_to_end(client) == (b"", ConnectionResetError)
        except ConnectionResetError:  # the reset came before connect() had returned
            pass
        assert proxy.connections_accepted == 1
        assert proxy.wait_for(lambda p: p.active_connections == 0)


def test_stop_closes_everything_and_joins(echo: EchoServer) -> None:
    proxy = FaultProxy(upstream=echo.address)
    with pytest.raises(RuntimeError):
        proxy.port  # noqa: B018
    proxy.start()
    assert proxy.uri() == f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
    assert proxy.uri("u@x", "p:w", "vh") == f"amqp://u%40x:p%3Aw@127.0.0.1:{proxy.port}/vh"
    client = connect(proxy)
    assert exchange(client, b"hello") == b"hello"
    thread = proxy._thread
    assert thread is not None and thread.is_alive()

    proxy.stop()

    assert not thread.is_alive()
    assert read_to_end(client) == (b"", ConnectionResetError)
    client.close()
    assert echo.wait_for(lambda: [r.end for r in echo.records] == ["reset"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=TIMEOUT)
    with pytest.raises(RuntimeError, match="not running"):
        proxy.cut()
    proxy.stop()  # idempotent
    assert not proxy.wait_for(lambda p: p.cuts > 0, timeout=0.01)


# -- through RabbitMQ ---------------------------------------------------------------------------


@pytest.fixture
def amqp(rabbitmq_uri: str) -> Iterator[tuple[FaultProxy, str]]:
    """A proxy in front of the test RabbitMQ (skipped, or failed with CI=true, when it is down)."""
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(rabbitmq_uri)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    with FaultProxy(upstream=(host, port)) as proxy:
        uri = proxy.uri(parts.username or "guest", parts.password or "guest", parts.path or "/")
        yield proxy, uri


def _get(queue: Any) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        message = queue.get(no_ack=True)
        if message is not None:
            return message
        time.sleep(0.01)
    raise AssertionError(f"no message on {queue.name} within {TIMEOUT} s")


@pytest.mark.rabbitmq
def test_kombu_publish_and_get_through_the_proxy(amqp: tuple[FaultProxy, str]) -> None:
    from kombu import Connection, Producer, Queue

    proxy, uri = amqp
    name = f"dbevents-faultproxy-{uuid.uuid4().hex}"
    with Connection(uri, connect_timeout=TIMEOUT) as connection:
        channel = connection.channel()
        queue = Queue(name, exclusive=True, auto_delete=True, channel=channel)
        queue.declare()
        Producer(channel).publish({"pid": os.getpid()}, exchange="", routing_key=name, serializer="json")
        assert _get(queue).decode() == {"pid": os.getpid()}
        assert proxy.connections_accepted == 1
        assert proxy.bytes_upstream > 0 and proxy.bytes_downstream > 0

        proxy.cut()

        with pytest.raises(tuple(connection.connection_errors)):
            queue.get(no_ack=True)


@pytest.mark.rabbitmq
def test_kombu_hangs_on_a_stalled_proxy_until_its_own_timeout(amqp: tuple[FaultProxy, str]) -> None:
    from kombu import Connection, Queue

    proxy, uri = amqp
    name = f"dbevents-faultproxy-{uuid.uuid4().hex}"
    with Connection(uri, connect_timeout=TIMEOUT, transport_options={"read_timeout": 0.3}) as connection:
        queue = Queue(name, exclusive=True, auto_delete=True, channel=connection.channel())
        queue.declare()
        downstream = proxy.bytes_downstream

        proxy.stall()

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            queue.get(no_ack=True)  # the basic.get-ok / get-empty never comes back
        assert time.monotonic() - started >= 0.25
        assert proxy.bytes_downstream == downstream
        assert proxy.active_connections == 1
        proxy.cut()  # the AMQP connection is out of step after the timeout: drop it
