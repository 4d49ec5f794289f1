"""What the tests' protocol servers (TGI, vLLM) share: a threaded HTTP server on loopback, run in a
background thread, and a switch for how it answers (``mode``: ok, error, wrong output, ...)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

WRONG_OUTPUT = "this is not the answer you are looking for"


class LoopbackServer:
    """Subclasses set MODES and THREAD_NAME and call ``serve(handler)`` at the end of their __init__ (the
    handler class reads the server's state, so it is made once that state exists)."""

    MODES: tuple[str, ...] = ("ok",)
    THREAD_NAME = "loopback-server"

    mode = "ok"
    wrong_output = WRONG_OUTPUT

    def serve(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str, wrong_output: str | None = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode {mode!r}: expected one of {self.MODES}")
        self.mode = mode
        if wrong_output is not None:
            self.wrong_output = wrong_output

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
