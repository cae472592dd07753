"""A small threaded TCP proxy on 127.0.0.1 for fault tests: forwards to a server (Dovecot) and,
on demand, cuts every connection, cuts one in the middle of a command, or refuses new ones.

It also counts the bytes that pass each way, so a test can tell how much the client read.
Every loop is bounded: sockets wait at most ``POLL_SECONDS`` at a time and look at a flag.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import threading
import time
from typing import Literal

# How long a socket wait lasts before the thread looks at its stop flag again.
POLL_SECONDS = 0.1
# Read size per recv: small enough that a cut lands inside a command, not after it.
CHUNK = 16384
# How long stop() waits for the threads to end.
JOIN_SECONDS = 5.0
# An IMAP command line as imapclient sends it: tag, then the command ("ABCD12 UID FETCH ...").
_COMMAND = re.compile(rb"(?m)^[A-Z]{4}\d+ ((?:UID )?[A-Z]+)")

Direction = Literal["up", "down"]  # up: client -> server, down: server -> client


class _Pair:
    """One client connection and its connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.closed = threading.Event()
        self.last_command = ""  # the last IMAP command seen going up (for cut_log)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """``127.0.0.1:port`` -> ``target_host:target_port``, one thread per connection."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.bytes_up = 0  # client -> server
        self.bytes_down = 0  # server -> client
        self.connections = 0  # accepted and connected to the server
        self.drops = 0  # connections cut by drop_all() or cut_after()
        self.cut_log: list[str] = []  # per cut_after(): the command in progress when it cut
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._listening = threading.Event()
        self._stopped = threading.Event()
        self._cut: tuple[Direction, int] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (on a free port the first time, on the same port after ``refuse()``)."""
        if self._listener is not None:
            raise RuntimeError("TcpProxy already listening")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.settimeout(POLL_SECONDS)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopped.clear()
        self._listening.set()
        self._spawn(self._accept_loop, listener, name="accept")

    def stop(self) -> None:
        """Close the port and every connection; wait (bounded) for the threads."""
        self._stopped.set()
        self.refuse()
        deadline = time.monotonic() + JOIN_SECONDS
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"TcpProxy threads did not stop: {alive}")

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- faults --------------------------------------------------------------------------------

    def drop_all(self) -> int:
        """Cut every open connection at once (both sides see the socket close); how many."""
        with self._lock:
            pairs = [p for p in self._pairs if not p.closed.is_set()]
            self.drops += len(pairs)
        for pair in pairs:
            pair.close()
        return len(pairs)

    def cut_after(self, nbytes: int, direction: Direction = "up") -> None:
        """Cut the connection that carries the next ``nbytes`` bytes in ``direction``, right
        there: the rest of that read is never forwarded (a command or a reply cut in two)."""
        if nbytes <= 0:
            raise ValueError("nbytes must be positive")
        with self._lock:
            self._cut = (direction, nbytes)

    @property
    def cut_pending(self) -> bool:
        with self._lock:
            return self._cut is not None

    def refuse(self) -> None:
        """Close the listening port (new connections are refused) and cut the open ones."""
        self._listening.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown first: it stops the listening at once, even while the accept thread is
            # inside accept() (close alone leaves the socket to that thread until it returns).
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
            for thread in list(self._threads):
                if thread.name.endswith("-accept"):
                    thread.join(timeout=JOIN_SECONDS)
        self.drop_all()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for p in self._pairs if not p.closed.is_set())

    # --- threads -------------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object, name: str = "pump") -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.name = f"tcpproxy-{self.port}-{len(self._threads)}-{name}"
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listening.is_set() and not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by refuse()
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:  # the server is down: the client sees its connection close
                with contextlib.suppress(OSError):
                    client.close()
                continue
            for sock in (client, server):  # no Nagle delay on top of the endpoints' own
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.add(pair)
                self.connections += 1
            self._spawn(self._pump, pair)

    def _pump(self, pair: _Pair) -> None:
        """Copy bytes both ways until either side closes or the pair is cut."""
        selector = selectors.DefaultSelector()
        try:
            pair.client.setblocking(False)
            pair.server.setblocking(False)
            selector.register(pair.client, selectors.EVENT_READ, ("up", pair.server))
            selector.register(pair.server, selectors.EVENT_READ, ("down", pair.client))
            while not pair.closed.is_set() and not self._stopped.is_set():
                for key, _ in selector.select(timeout=POLL_SECONDS):
                    direction, other = key.data
                    try:
                        data = key.fileobj.recv(CHUNK)  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        return
                    _quick_ack(key.fileobj)  # type: ignore[arg-type]
                    if direction == "up":
                        commands = _COMMAND.findall(data)
                        if commands:
                            pair.last_command = commands[-1].decode()
                    data, cut = self._take_cut(direction, data)
                    if data and not self._send(other, data, pair):
                        return
                    self._count(direction, len(data))
                    if cut:
                        with self._lock:
                            self.drops += 1
                            self.cut_log.append(pair.last_command)
                        return
        except OSError:
            return
        finally:
            selector.close()
            pair.close()
            with self._lock:
                self._pairs.discard(pair)

    def _take_cut(self, direction: Direction, data: bytes) -> tuple[bytes, bool]:
        """What of ``data`` to forward, and whether to cut the connection after it."""
        with self._lock:
            if self._cut is None or self._cut[0] != direction:
                return data, False
            left = self._cut[1]
            if len(data) < left:
                self._cut = (direction, left - len(data))
                return data, False
            self._cut = None
            return data[:left], True

    def _send(self, sock: socket.socket, data: bytes, pair: _Pair) -> bool:
        """sendall on a non-blocking socket, bounded by the pair being cut."""
        view = memoryview(data)
        while view:
            if pair.closed.is_set() or self._stopped.is_set():
                return False
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                with selectors.DefaultSelector() as writable:
                    writable.register(sock, selectors.EVENT_WRITE)
                    writable.select(timeout=POLL_SECONDS)
                continue
            except OSError:
                return False
            view = view[sent:]
        return True

    def _count(self, direction: Direction, n: int) -> None:
        with self._lock:
            if direction == "up":
                self.bytes_up += n
            else:
                self.bytes_down += n


def _quick_ack(sock: socket.socket) -> None:
    """ACK what was just read at once (Linux; it has to be asked again after every read).

    Without it, a client that writes a literal and then its CRLF (imaplib does, with Nagle on)
    waits for the proxy's delayed ACK, up to 40 ms per APPEND or literal SEARCH, which a client
    talking to Dovecot directly never does.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


__all__ = ["TcpProxy"]
