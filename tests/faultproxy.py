"""A fault-injection TCP proxy for the tests: put it between a client and RabbitMQ, then break things.

::

    with FaultProxy(upstream=("127.0.0.1", 5672)) as proxy:
        connection = kombu.Connection(proxy.uri())
        ...
        proxy.cut()                  # every open connection is reset, new ones still work
        proxy.refuse()               # the port refuses connections (and open ones are reset)
        proxy.accept()               # the same port accepts again
        proxy.stall()                # nothing is forwarded any more, connections stay open
        proxy.resume()               # what was held back is forwarded
        proxy.cut_after(100)         # reset everything once 100 more bytes went client -> upstream
        proxy.throttle(200_000)      # forward at most 200 kB/s client -> upstream (TCP back-pressure)
        proxy.throttle(None)         # full speed again
        proxy.wait_for(lambda p: p.cuts == 1, timeout=5)
        proxy.round_trips            # client requests answered: the client sent, then upstream replied

One thread runs a selector loop that owns every socket; the public methods hand it a command and
wait until it has been carried out, so when ``cut()`` or ``refuse()`` returns the fault is in place.
Pure standard library.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

try:  # the size of a socket's send queue (Linux): lets cut_after() deliver its bytes before the reset
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    fcntl = None  # type: ignore[assignment]
    _TIOCOUTQ = None

__all__ = ["Direction", "FaultProxy"]

log = logging.getLogger(__name__)

Direction = Literal["upstream", "downstream"]
T = TypeVar("T")

LISTEN_HOST = "127.0.0.1"
_CHUNK = 65536
#: Bytes read but not yet written, per direction and connection, before reading pauses.
_MAX_BUFFER = 1 << 20
#: How long a public method waits for the proxy thread to carry out its command.
_COMMAND_TIMEOUT = 10.0
#: How long cut_after() waits for its last bytes to leave the send queue before the reset.
_DRAIN_TIMEOUT = 1.0
_LINGER_ZERO = struct.pack("ii", 1, 0)
_WAKE = "wake"
_LISTEN = "listen"


class _Pipe:
    """One direction of a connection: bytes read from one side, waiting to be written to the other."""

    def __init__(self, direction: Direction) -> None:
        self.direction: Direction = direction
        self.buffer = bytearray()
        self.eof = False  # the source side has sent FIN
        self.shut = False  # the FIN has been passed on (shutdown(SHUT_WR) of the destination)


class _Connection:
    """A client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.connecting = True
        self.closed = False
        self.up = _Pipe("upstream")  # client -> upstream
        self.down = _Pipe("downstream")  # upstream -> client
        self.last: Direction | None = None  # the direction bytes were last read in

    def destination(self, pipe: _Pipe) -> socket.socket:
        return self.upstream if pipe is self.up else self.client


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (ephemeral port) forwarding every connection to ``upstream``.

    Thread-safe: any thread may call the fault methods; they return once the fault is in place.
    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.upstream = upstream
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._commands: list[tuple[Callable[[], Any], threading.Event, list[tuple[bool, Any]]]] = []
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        self._error: BaseException | None = None
        self._port: int | None = None
        self._upstream_family = socket.AF_INET
        self._upstream_address: Any = None
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._connections: set[_Connection] = set()
        # Fault state: only the proxy thread reads or changes it.
        self._stalled = False
        self._refusing = False
        self._budget: dict[Direction, int] = {}
        self._rate: dict[Direction, float] = {}     # bytes per second, when throttled
        self._tokens: dict[Direction, float] = {}
        self._refilled = time.monotonic()
        # Counters, under _lock.
        self._accepted = 0
        self._bytes: dict[Direction, int] = {"upstream": 0, "downstream": 0}
        self._cuts = 0
        self._round_trips = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on an ephemeral port of 127.0.0.1 and start forwarding."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("FaultProxy can only be started once")
            host, port = self.upstream
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self._upstream_family, self._upstream_address = family, address
            self._selector = selectors.DefaultSelector()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            try:
                self._listen(0)
            except BaseException:
                self._close_resources()
                raise
            self._running = True
            self._thread = threading.Thread(target=self._run, name=f"FaultProxy-{self._port}", daemon=True)
            self._thread.start()
        log.debug("fault proxy 127.0.0.1:%s -> %s:%s", self._port, host, port)
        return self

    def stop(self) -> None:
        """Close every socket and join the proxy thread. Idempotent.

        Raises RuntimeError if the proxy thread had crashed (a bug of the proxy)."""
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            try:
                self._call(self._request_stop)
            except RuntimeError:  # the loop ended on its own in the meantime
                pass
        thread.join(_COMMAND_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the FaultProxy thread did not stop")
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError("the FaultProxy thread crashed") from error

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (the same one for the proxy's whole life)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``."""
        return (LISTEN_HOST, self.port)

    def uri(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:
        """An ``amqp://`` URI that connects through the proxy."""
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{credentials}@{LISTEN_HOST}:{self.port}/{quote(vhost, safe='')}"

    # -- faults --------------------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection, both ways (SO_LINGER 0). New connections are still forwarded."""
        self._call(self._cut_all)

    def refuse(self) -> None:
        """Refuse new connections (the port gives ECONNREFUSED) and reset the open ones."""
        self._call(self._refuse)

    def accept(self) -> None:
        """Listen on the same port again after :meth:`refuse`."""
        self._call(self._accept_again)

    def stall(self) -> None:
        """Stop forwarding in both directions; connections stay open, nothing is read or written."""
        self._call(self._stall)

    def resume(self) -> None:
        """Forward again, starting with what was held back during the stall."""
        self._call(self._resume)

    def throttle(self, bytes_per_second: float | None, direction: Direction = "upstream") -> None:
        """Forward at most ``bytes_per_second`` in ``direction`` (None: no limit). What the proxy
        cannot forward stays in the senders' socket buffers: the client sees TCP back-pressure, as
        from a slow or flow-controlled broker."""
        self._call(lambda: self._set_rate(direction, bytes_per_second))

    def cut_after(self, n_bytes: int, direction: Direction = "upstream") -> None:
        """Reset every connection once ``n_bytes`` more bytes have been forwarded in ``direction``.

        ``"upstream"`` counts client -> upstream bytes, ``"downstream"`` upstream -> client, summed over
        all connections. Exactly ``n_bytes`` more are delivered (the chunk that crosses the limit is
        split), then everything is cut. One-shot; calling it again replaces the pending trigger.
        ``n_bytes=0`` cuts at once."""
        if direction not in ("upstream", "downstream"):
            raise ValueError(f"direction must be 'upstream' or 'downstream', not {direction!r}")
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        self._call(lambda: self._arm(n_bytes, direction))

    # -- counters ------------------------------------------------------------------------------

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since start."""
        with self._lock:
            return self._accepted

    @property
    def bytes_upstream(self) -> int:
        """Bytes written to upstream connections (client -> upstream)."""
        with self._lock:
            return self._bytes["upstream"]

    @property
    def bytes_downstream(self) -> int:
        """Bytes written to client connections (upstream -> client)."""
        with self._lock:
            return self._bytes["downstream"]

    @property
    def cuts(self) -> int:
        """How many times all connections were cut (by cut(), refuse() or a cut_after() trigger)."""
        with self._lock:
            return self._cuts

    @property
    def round_trips(self) -> int:
        """Round trips so far: how many times upstream answered after the client had sent (a
        pipelined batch of requests is one)."""
        with self._lock:
            return self._round_trips

    @property
    def active_connections(self) -> int:
        """Client connections open right now."""
        with self._lock:
            return len(self._connections)

    def wait_for(self, predicate: Callable[[FaultProxy], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(proxy)`` is true (rechecked whenever a counter changes).

        Returns False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # -- commands (run on the proxy thread) ----------------------------------------------------

    def _call(self, function: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return function()
        done = threading.Event()
        box: list[tuple[bool, Any]] = []
        with self._lock:
            if not self._running:
                raise RuntimeError("FaultProxy is not running")
            self._commands.append((function, done, box))
            self._wake()
        if not done.wait(_COMMAND_TIMEOUT):
            raise TimeoutError("the FaultProxy thread did not answer")
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _wake(self) -> None:
        assert self._wake_w is not None
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:  # already plenty of wake-ups pending
            pass

    def _run_commands(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            commands, self._commands = self._commands, []
        for function, done, box in commands:
            try:
                box.append((True, function()))
            except Exception as error:
                box.append((False, error))
            done.set()

    def _request_stop(self) -> None:
        self._stopping = True

    def _stall(self) -> None:
        self._stalled = True
        for connection in list(self._connections):
            self._update(connection)

    def _resume(self) -> None:
        self._stalled = False
        for connection in list(self._connections):
            for pipe in (connection.up, connection.down):
                if not connection.closed:
                    self._flush(connection, pipe)
            if not connection.closed:
                self._update(connection)

    def _refuse(self) -> None:
        self._refusing = True
        self._close_listener()
        self._cut_all()

    def _accept_again(self) -> None:
        if self._refusing:
            self._listen(self.port)
            self._refusing = False

    def _set_rate(self, direction: Direction, rate: float | None) -> None:
        if rate is None:
            self._rate.pop(direction, None)
            self._tokens.pop(direction, None)
            self._resume()
        else:
            self._rate[direction] = float(rate)
            self._tokens[direction] = 0.0

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._refilled = now - self._refilled, now
        for direction, rate in self._rate.items():
            # At most a tenth of a second's worth at once: the rate holds at every scale.
            self._tokens[direction] = min(rate / 10, self._tokens.get(direction, 0.0) + elapsed * rate)

    def _arm(self, n_bytes: int, direction: Direction) -> None:
        if n_bytes == 0:
            self._budget.pop(direction, None)
            self._cut_all()
        else:
            self._budget[direction] = n_bytes

    def _cut_all(self) -> None:
        # Counted first: whoever sees a reset sees the cut counted.
        with self._changed:
            self._cuts += 1
            self._changed.notify_all()
        for connection in list(self._connections):
            self._close(connection, reset=True)

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while not self._stopping:
                if self._rate:
                    self._refill()
                    for connection in list(self._connections):
                        for pipe in (connection.up, connection.down):
                            if pipe.direction in self._rate and pipe.buffer and not connection.closed:
                                self._flush(connection, pipe)
                        if not connection.closed:
                            self._update(connection)
                for key, mask in self._selector.select(0.01 if self._rate else None):
                    if key.data is _WAKE:
                        self._run_commands()
                    elif key.data is _LISTEN:
                        if key.fileobj is self._listener:
                            self._accept_pending()
                    else:
                        connection, side = key.data
                        if not connection.closed:
                            self._handle(connection, side, mask)
        except BaseException as error:
            log.exception("FaultProxy thread crashed")
            self._error = error
        finally:
            with self._lock:
                self._running = False
                commands, self._commands = self._commands, []
            for _, done, box in commands:
                box.append((False, RuntimeError("FaultProxy stopped")))
                done.set()
            for connection in list(self._connections):
                self._close(connection, reset=True)
            self._close_resources()

    def _handle(self, connection: _Connection, side: str, mask: int) -> None:
        if side == "upstream" and connection.connecting:
            self._connected(connection)
        else:
            reading, writing = (
                (connection.up, connection.down) if side == "client" else (connection.down, connection.up)
            )
            if mask & selectors.EVENT_READ:
                self._read(connection, reading)
            if mask & selectors.EVENT_WRITE and not connection.closed:
                self._flush(connection, writing)
        if not connection.closed:
            self._update(connection)

    def _listen(self, port: int) -> None:
        assert self._selector is not None
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((LISTEN_HOST, port))
            listener.listen(128)
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, _LISTEN)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._port = listener.getsockname()[1]

    def _close_listener(self) -> None:
        if self._listener is not None:
            assert self._selector is not None
            self._selector.unregister(self._listener)
            self._listener.close()  # pending, not yet accepted connections are reset by the kernel
            self._listener = None

    def _close_resources(self) -> None:
        self._close_listener()
        if self._selector is not None:
            self._selector.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _accept_pending(self) -> None:
        assert self._listener is not None and self._selector is not None
        for _ in range(64):  # the rest on the next select()
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                log.warning("FaultProxy: accept() failed: %s", error)
                return
            with self._changed:
                self._accepted += 1
                self._changed.notify_all()
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream = socket.socket(self._upstream_family, socket.SOCK_STREAM)
            except OSError:
                _reset(client)
                continue
            upstream.setblocking(False)
            connection = _Connection(client, upstream)
            with self._changed:
                self._connections.add(connection)
                self._changed.notify_all()
            code = upstream.connect_ex(self._upstream_address)
            if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                log.debug("FaultProxy: upstream connect failed: %s", errno.errorcode.get(code, code))
                self._close(connection, reset=True)
                continue
            self._update(connection)

    def _connected(self, connection: _Connection) -> None:
        code = connection.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            log.debug("FaultProxy: upstream connect failed: %s", errno.errorcode.get(code, code))
            self._close(connection, reset=True)
            return
        connection.connecting = False
        connection.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._flush(connection, connection.up)

    def _read(self, connection: _Connection, pipe: _Pipe) -> None:
        source = connection.client if pipe is connection.up else connection.upstream
        try:
            data = source.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the peer: pass the reset on
            self._close(connection, reset=True)
            return
        if data:
            pipe.buffer += data
            if pipe is connection.down and connection.last == "upstream":
                with self._lock:
                    self._round_trips += 1
            connection.last = pipe.direction
        else:
            pipe.eof = True
        self._flush(connection, pipe)

    def _flush(self, connection: _Connection, pipe: _Pipe) -> None:
        """Write what ``pipe`` holds to its destination, then pass on a FIN once it is empty."""
        if self._stalled or connection.connecting:
            return
        destination = connection.destination(pipe)
        while pipe.buffer:
            budget = self._budget.get(pipe.direction)
            size = len(pipe.buffer) if budget is None else min(len(pipe.buffer), budget)
            if pipe.direction in self._rate:
                size = min(size, int(self._tokens.get(pipe.direction, 0.0)))
                if size <= 0:
                    return   # the run loop flushes again when tokens are back
            # Sent and counted under the lock: whoever has received the bytes sees them counted.
            with self._changed:
                try:
                    sent = destination.send(pipe.buffer[:size])
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    sent = -1
                else:
                    self._bytes[pipe.direction] += sent
                    if pipe.direction in self._tokens:
                        self._tokens[pipe.direction] -= sent
                    self._changed.notify_all()
            if sent < 0:
                self._close(connection, reset=True)
                return
            del pipe.buffer[:sent]
            if budget is not None:
                if budget > sent:
                    self._budget[pipe.direction] = budget - sent
                else:
                    del self._budget[pipe.direction]
                    _drain(destination)
                    self._cut_all()
                    return
        if pipe.eof and not pipe.shut:
            try:
                destination.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(connection, reset=True)
                return
            pipe.shut = True
            if connection.up.shut and connection.down.shut:
                self._close(connection, reset=False)

    def _update(self, connection: _Connection) -> None:
        """Register the connection's sockets for the events they need now."""
        read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
        active = not self._stalled
        client = upstream = 0
        if active and not connection.up.eof and len(connection.up.buffer) < _MAX_BUFFER:
            client |= read
        if active and connection.down.buffer and "downstream" not in self._rate:
            client |= write
        if connection.connecting:
            upstream = write
        else:
            if active and not connection.down.eof and len(connection.down.buffer) < _MAX_BUFFER:
                upstream |= read
            if active and connection.up.buffer and "upstream" not in self._rate:
                upstream |= write
        self._register(connection.client, client, (connection, "client"))
        self._register(connection.upstream, upstream, (connection, "upstream"))

    def _register(self, sock: socket.socket, events: int, data: Any) -> None:
        assert self._selector is not None
        try:
            key: selectors.SelectorKey | None = self._selector.get_key(sock)
        except KeyError:
            key = None
        if not events:
            if key is not None:
                self._selector.unregister(sock)
        elif key is None:
            self._selector.register(sock, events, data)
        elif key.events != events:
            self._selector.modify(sock, events, data)

    def _close(self, connection: _Connection, reset: bool) -> None:
        if connection.closed:
            return
        connection.closed = True
        with self._changed:  # before closing: whoever sees the close sees the connection gone
            self._connections.discard(connection)
            self._changed.notify_all()
        assert self._selector is not None
        for sock in (connection.client, connection.upstream):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            if reset:
                _reset(sock)
            else:
                sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST (ECONNRESET) rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass
    sock.close()


def _unsent(sock: socket.socket) -> int:
    if fcntl is None or _TIOCOUTQ is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def _drain(sock: socket.socket) -> None:
    """Wait (briefly) until the bytes written to ``sock`` have reached the peer, so a reset keeps them."""
    deadline = time.monotonic() + _DRAIN_TIMEOUT
    while _unsent(sock) and time.monotonic() < deadline:
        time.sleep(0.001)
