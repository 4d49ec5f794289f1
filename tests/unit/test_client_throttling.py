"""The operator's client honours API Priority and Fairness: a 429 Too Many Requests with Retry-After is sent
again after that many seconds, for writes (PATCH: server-side apply, merge patches; POST) as well as reads,
and only when the retries are used up does the caller see the 429. Against a real HTTP server on loopback
with the real kubernetes client and urllib3."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client as k8s

from kubetune.handlers import lower_throttled_retries
from kubetune.reconcile.client import ApiException, Kube, api_client
from kubetune.reconcile.throttling import THROTTLED_RETRIES, throttled_retries


class Throttling(ThreadingHTTPServer):
    """Answers the first `reject` requests 429 (Retry-After: 1), then 200 with the request echoed."""

    def __init__(self, reject: int):
        super().__init__(("127.0.0.1", 0), Handler)
        self.reject = reject
        self.seen: list[tuple[float, str, str]] = []


class Handler(BaseHTTPRequestHandler):
    server: Throttling

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.server.seen.append((time.monotonic(), self.command, self.path))
        if len(self.server.seen) <= self.server.reject:
            payload = json.dumps(
                {"kind": "Status", "code": 429, "message": "Too many requests, please try again later."}
            )
            self.send_response(429)
            self.send_header("Retry-After", "1")
        else:
            payload = json.dumps({"kind": "ConfigMap", "metadata": {"name": "x"}, "echo": body})
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    do_GET = do_PATCH = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server_and_kube():
    def make(reject: int) -> tuple[Throttling, Kube]:
        server = Throttling(reject)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        cfg = k8s.Configuration()
        cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
        return server, Kube(api_client(cfg, pool_size=2))

    servers: list[Throttling] = []
    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("verb", ["apply", "patch", "get", "event"])
def test_a_throttled_request_is_sent_again_after_retry_after(server_and_kube, verb):
    server, kube = server_and_kube(reject=2)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ns"}}
    t0 = time.monotonic()
    if verb == "apply":
        assert kube.apply(cm)["metadata"]["name"] == "x"
    elif verb == "patch":
        kube.patch("ConfigMap", "ns", "x", {"data": {"a": "b"}})
    elif verb == "get":
        assert kube.get("ConfigMap", "ns", "x") is not None
    else:
        kube.event({**cm, "metadata": {**cm["metadata"], "uid": "u"}}, "Normal", "R", "m")
    assert len(server.seen) == 3, server.seen  # 2 rejected, the third answered
    gaps = [b[0] - a[0] for a, b in zip(server.seen, server.seen[1:], strict=False)]
    assert all(g >= 0.95 for g in gaps), gaps  # Retry-After: 1 was honoured each time
    assert time.monotonic() - t0 < 5


def test_when_the_retries_are_used_up_the_caller_sees_the_429():
    server = Throttling(reject=10_000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = k8s.Configuration()
        cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
        cfg.retries = throttled_retries().new(total=2, status=2)  # the operator's policy, fewer tries
        kube = Kube(k8s.ApiClient(configuration=cfg))
        with pytest.raises(ApiException) as err:
            kube.patch("ConfigMap", "ns", "x", {"data": {}})
        assert err.value.status == 429 and "Too many requests" in err.value.message
        assert len(server.seen) == 3
    finally:
        server.shutdown()
        server.server_close()
    assert THROTTLED_RETRIES >= 5  # the operator's: several Retry-Afters before a reconcile fails


def test_kopfs_retried_429s_are_warnings_and_its_give_ups_stay_errors():
    root = logging.getLogger("test-throttling-root")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    lower_throttled_retries(root)
    lower_throttled_retries(root)  # once
    assert len(handler.filters) == 1
    kopf_log = logging.getLogger("kopf._cogs.clients.watching")
    retry = "Request attempt #1/9 failed; will retry: GET /api/v1/pods -> APITooManyRequestsError('Too many')"
    give_up = (
        "Request attempt #9/9 failed; escalating: GET /api/v1/pods -> APITooManyRequestsError('Too many')"
    )
    other = "Request attempt #1/9 failed; will retry: GET /api/v1/pods -> APIServerError('boom')"
    for message in (retry, give_up, other):
        handler.handle(kopf_log.makeRecord(kopf_log.name, logging.ERROR, __file__, 1, message, None, None))
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["WARNING", "ERROR", "ERROR"], lines


def test_a_client_may_take_another_retry_policy():
    cfg = k8s.Configuration()
    cfg.host = "http://127.0.0.1:1"
    assert isinstance(api_client(cfg).configuration.retries, type(throttled_retries()))
    fewer = throttled_retries().new(total=1, status=1)
    assert api_client(k8s.Configuration(), retries=fewer).configuration.retries is fewer
