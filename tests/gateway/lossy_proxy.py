"""A fault injector: a TCP proxy on loopback in front of the gateway that loses the response of every Nth
matching request. The gateway has done the work; the client sees the connection close without an answer,
as when a response is lost to a network fault or a client timeout, and retries."""

from __future__ import annotations

import contextlib
import socket
import threading


class LossyProxy:
    def __init__(
        self, upstream_port: int, every: int = 3, match: bytes = b"POST /v1/fine_tuning/jobs "
    ) -> None:
        self.upstream_port, self.every, self.match = upstream_port, every, match
        self.seen = self.dropped = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, name="lossy-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self._server.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        """One connection (the client opens one per request: no keep-alive)."""
        with conn, socket.create_connection(("127.0.0.1", self.upstream_port)) as up:
            first = conn.recv(65536)
            drop = False
            if first.startswith(self.match):
                with self._lock:
                    self.seen += 1
                    drop = self.seen % self.every == 0
            up.sendall(first)
            threading.Thread(target=self._pump, args=(conn, up), daemon=True).start()
            while True:
                data = up.recv(65536)
                if not data:
                    return
                if drop:  # the gateway answered: lose the answer
                    with self._lock:
                        self.dropped += 1
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                conn.sendall(data)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
