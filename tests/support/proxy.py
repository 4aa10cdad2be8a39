"""A TCP proxy in front of the real test server that cuts chosen connections at their first
statement: the session has been opened and authenticated, and the network goes away just as
the client starts to use it (a restart or a failover between connect and configure).

Only the client's side is parsed, just enough to find its first query or parse message; the
server's answers are passed through unread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_STATEMENTS = frozenset({b"Q", b"P"})  # simple query, extended-protocol parse


@dataclass
class CuttingProxy:
    """Accepted connections are numbered from 0; those for which ``cut(number)`` holds are
    closed, on both sides, when the client sends its first statement."""

    upstream: str  # the real server's URL
    cut: Callable[[int], bool]
    accepted: int = 0
    cuts: int = 0
    _listener: socket.socket = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """``upstream`` through the proxy (plain TCP: no TLS or GSS negotiation to parse)."""
        port = str(self._listener.getsockname()[1])
        return make_conninfo(
            self.upstream, host="127.0.0.1", port=port, sslmode="disable", gssencmode="disable"
        )

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                number = self.accepted
                self.accepted += 1
            threading.Thread(target=self._serve, args=(client, number), daemon=True).start()

    def _dial(self) -> socket.socket:
        params = conninfo_to_dict(self.upstream)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(f"{host}/.s.PGSQL.{port}")
            return server
        return socket.create_connection((host, port))

    def _serve(self, client: socket.socket, number: int) -> None:
        server = self._dial()
        threading.Thread(target=_pump, args=(server, client), daemon=True).start()
        try:
            length = _exactly(client, 4)
            server.sendall(length + _exactly(client, int.from_bytes(length) - 4))
            while True:
                header = _exactly(client, 5)
                body = _exactly(client, int.from_bytes(header[1:]) - 4)
                if header[:1] in _STATEMENTS and self.cut(number):
                    with self._lock:
                        self.cuts += 1
                    return
                server.sendall(header + body)
        except (ConnectionError, OSError):
            return
        finally:
            _hang_up(client)
            _hang_up(server)


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    _hang_up(sink)


def _hang_up(conn: socket.socket) -> None:
    with suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


@contextmanager
def cutting_proxy(upstream: str, cut: Callable[[int], bool]) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(upstream, cut)
    try:
        yield proxy
    finally:
        proxy.close()
