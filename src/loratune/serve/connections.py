"""The HTTP server's connections: a bounded number of them, each with timeouts, so slow or silent clients cannot hold
the server.

- Every read and write of a socket times out after --idle-timeout (a silent keep-alive connection, a half-open one,
  a client that stopped reading its stream), and one request must arrive whole within --idle-timeout of its first
  byte (a client trickling one byte at a time).
- At most --max-connections are open, one thread each. When all are taken, the connection that has waited longest
  for its next request is closed to make room; when none is idle, the new one gets a 503 and is closed.
"""

from __future__ import annotations

import io
import json
import select
import socket
import threading
import time
from http.server import ThreadingHTTPServer

from loratune.serve.limits import Limits


class LimitedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen() backlog: connections the kernel holds until accept()

    def __init__(self, address, handler, limits: Limits):
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[socket.socket, float | None] = {}  # connection -> waiting for a request since (None: busy)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._lock:
            if len(self._open) >= self.limits.max_connections and not self._close_longest_idle():
                _refuse(request)
                return
            self._open[request] = time.monotonic()
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        """A client that resets or times out is not our bug: no traceback in the log for it."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def mark(self, connection: socket.socket, waiting: bool) -> None:
        """Note whether a connection is waiting for its next request (it may then be closed to make room)."""
        with self._lock:
            if connection in self._open:
                self._open[connection] = time.monotonic() if waiting else None

    def _close_longest_idle(self) -> bool:
        idle = [(since, conn) for conn, since in self._open.items() if since is not None]
        if not idle:
            return False
        _, conn = min(idle, key=lambda pair: pair[0])
        del self._open[conn]
        try:
            conn.shutdown(socket.SHUT_RDWR)  # its thread's blocked read returns: the thread ends and closes it
        except OSError:
            pass
        return True


def _refuse(request: socket.socket) -> None:
    """Answer 503 on a connection we will not serve, without blocking the accepting thread."""
    body = json.dumps(
        {
            "error": {
                "message": "the server has no free connection (--max-connections); retry later",
                "type": "server_error",
                "param": None,
                "code": "server_busy",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        request.setblocking(False)
        request.send(head + body)
        request.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    request.close()


class RequestReader(io.RawIOBase):
    """A connection's socket as the handler's input, with the idle timeout on every read and a deadline on the
    whole of one request (set at its first byte)."""

    def __init__(self, connection: socket.socket, limits: Limits, on_first_byte):
        self.connection, self.limits, self.on_first_byte = connection, limits, on_first_byte
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def next_request(self) -> None:
        """Between requests only the idle timeout applies."""
        self.deadline = None

    def request_read(self) -> None:
        """The whole request is in: later reads (and writes) of the socket get the idle timeout again."""
        self.deadline = float("inf")
        self.connection.settimeout(self.limits.idle_timeout)

    def readinto(self, buffer) -> int:
        timeout = self.limits.idle_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive within --idle-timeout")
            timeout = min(timeout, left)
        self.connection.settimeout(timeout)
        n = self.connection.recv_into(buffer)
        if n and self.deadline is None:
            self.deadline = time.monotonic() + self.limits.idle_timeout
            self.on_first_byte()
        return n


def client_gone(connection: socket.socket) -> bool:
    """Has the client closed (or reset) its connection? A non-blocking look at the socket, nothing consumed.

    A readable socket with no data is a closed one; data there is a pipelined next request, left for later.
    """
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(connection, select.POLLIN | select.POLLPRI)
            if not poller.poll(0):
                return False
        elif not select.select([connection], [], [], 0)[0]:
            return False
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
