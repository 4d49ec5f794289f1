"""A namespace that appears while the operator starts is served (``kubetune operator -n 'PREFIX-*'``).

kopf serves namespace patterns by listing the namespaces once, then starting a watch on namespaces, which
lists them again before it streams changes. kopf 1.45.2 ignored what that second list showed, so a
namespace created between the two lists was never served: its objects were never reconciled, with no log
line. Under load, the serve tests' first namespace (created as soon as the operator's /healthz answered)
fell into that window. kubetune.kopf_namespaces is the fix.

The race is forced, not waited for: the operator reaches the API server through a proxy on loopback that
creates the namespace just before it forwards kopf's second list of namespaces.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.crds import apply_crds
from tests.support.operator import Operator
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

PREFIX = "nsrace"  # only this test's operator watches these namespaces
# Hop-by-hop headers, and what the proxy sets itself: the body is always sent on in chunks, uncompressed.
NOT_FORWARDED = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
    "accept-encoding", "content-length", "content-encoding",
}  # fmt: skip


class ApiServerProxy:
    """Plain HTTP on loopback in front of the cluster's API server (forwarded with the admin's TLS client,
    watch streams included). Before it forwards the Nth list of namespaces (not a watch) it calls
    ``before_namespace_list(N)``."""

    def __init__(self, kube: Any, before_namespace_list: Callable[[int], None]) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=kube.kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 64  # one connection per watch stream
        pool = client.ApiClient(cfg).rest_client.pool_manager
        upstream = cfg.host.rstrip("/")
        proxy = self
        self.namespace_lists = 0
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def forward(self) -> None:
                url = urlsplit(self.path)
                if (
                    self.command == "GET"
                    and url.path == "/api/v1/namespaces"
                    and parse_qs(url.query).get("watch") != ["true"]
                ):
                    with lock:
                        proxy.namespace_lists += 1
                        n = proxy.namespace_lists
                    before_namespace_list(n)
                length = int(self.headers.get("Content-Length") or 0)
                resp = pool.request(
                    self.command,
                    upstream + self.path,
                    body=self.rfile.read(length) if length else None,
                    headers={k: v for k, v in self.headers.items() if k.lower() not in NOT_FORWARDED},
                    preload_content=False,
                    redirect=False,
                    retries=False,
                )
                try:
                    self.send_response(resp.status)
                    for k, v in resp.headers.items():
                        if k.lower() not in NOT_FORWARDED:
                            self.send_header(k, v)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in resp.stream(65536):
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the operator closed a watch (it stops)
                    self.close_connection = True
                finally:
                    resp.release_conn()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward  # noqa: N815 - http.server's names

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="apiserver-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> ApiServerProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def test_a_namespace_created_between_kopfs_two_namespace_lists_is_served(kube, tmp_path):
    from kubernetes import client

    apply_crds(kube.api)
    core = client.CoreV1Api(kube.api)
    racer = f"{PREFIX}-{uuid.uuid4().hex[:8]}"

    def create_racer(n: int) -> None:
        # List 1 is kopf's initial scan of the namespaces; list 2 is its namespace watch's own list.
        if n == 2:
            core.create_namespace(
                client.V1Namespace(
                    metadata=client.V1ObjectMeta(name=racer, labels={"kubetune.io/test": "true"})
                )
            )

    with ApiServerProxy(kube, create_racer) as proxy:
        op = Operator(
            kube.kubeconfig_for(proxy.url, tmp_path / "kubeconfig"),
            tmp_path / "operator",
            namespaces=f"{PREFIX}-*",
        )
        op.start()
        try:
            wait_for(
                lambda: proxy.namespace_lists >= 2,
                60,
                0.1,
                "kopf's second list of namespaces, its namespace watch's own (if kopf no longer lists twice, "
                "the race this test forces is gone: see kubetune.kopf_namespaces)",
            )
            assert core.read_namespace(racer).metadata.name == racer  # made between the two lists
            client.CustomObjectsApi(kube.api).create_namespaced_custom_object(
                "kubetune.io", "v1alpha1", racer, "modelserves",
                {
                    "apiVersion": "kubetune.io/v1alpha1",
                    "kind": "ModelServe",
                    "metadata": {"name": "bot"},
                    "spec": {"model": {"fineTuneJobRef": {"name": "not-yet"}}},
                },
            )  # fmt: skip
            try:
                op.wait_reconciled("ModelServe", racer, "bot", after=0, timeout=60)
            except AssertionError as exc:
                raise AssertionError(
                    f"the operator never served namespace {racer}, created between kopf's two lists of "
                    f"namespaces: {exc}\n---- operator log ----\n{op.log_tail(40)}"
                ) from None
        finally:
            op.stop()
            kube.delete_namespace(racer)
