"""The client adapter without a cluster: credentials from kubeconfigs as kubectl reads them (exec plugins
refreshed when they expire, proxy-url), and the API server's refusal messages."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import yaml

from kubetune.reconcile.client import ApiException
from kubetune.reconcile.credentials import bearer_token, load_configuration

PLUGIN = """\
import datetime as dt, json, pathlib, sys
calls = pathlib.Path(sys.argv[1])
n = len(calls.read_text().splitlines()) + 1 if calls.exists() else 1
calls.write_text("x\\n" * n)
# The first credential is already inside the client's 5-minute refresh margin; later ones are not.
valid = dt.timedelta(minutes=1 if n == 1 else 60)
expires = (dt.datetime.now(dt.timezone.utc) + valid).strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": f"token-{n}", "expirationTimestamp": expires}}))
"""


def kubeconfig(tmp_path: Path, user: dict, **cluster: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://203.0.113.7:6443", **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_exec_plugin_credentials_are_refreshed_when_they_expire_once_across_threads(tmp_path, monkeypatch):
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    calls = tmp_path / "calls"
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(script), str(calls)],
        }
    }
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, user)))
    cfg = load_configuration()
    assert cfg.host == "https://203.0.113.7:6443"
    assert len(calls.read_text().splitlines()) == 1
    # The first token expires within the refresh margin: the next request runs the plugin once, even
    # when many worker threads ask at the same time; then the token is good for an hour.
    tokens: list[str | None] = []
    threads = [threading.Thread(target=lambda: tokens.append(bearer_token(cfg))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls.read_text().splitlines()) == 2
    assert set(tokens) == {"token-2"}
    assert bearer_token(cfg) == "token-2" and len(calls.read_text().splitlines()) == 2


def test_tokens_certificates_and_proxy_url_as_kubectl(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    path = kubeconfig(tmp_path, {"token": "static-token"}, **{"proxy-url": "http://proxy.example:3128"})
    cfg = load_configuration(str(path))
    assert bearer_token(cfg) == "static-token"
    assert cfg.proxy == "http://proxy.example:3128"
    # Nothing was written next to the kubeconfig.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kubeconfig"]


def test_api_exception_quotes_the_servers_message():
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": 'Service "llama.v2.sft-trainer" is invalid: metadata.name: Invalid value: "llama.v2.sft-trainer"',
        "reason": "Invalid",
        "code": 422,
    }
    exc = ApiException(422, "Unprocessable Entity", json.dumps(status))
    assert exc.status == 422 and exc.reason == "Unprocessable Entity"
    assert exc.message == status["message"]
    assert ApiException(0, "MaxRetryError", "connection refused").message == "connection refused"
    assert ApiException(503, "Service Unavailable", None).message == "Service Unavailable"


def paged_kube(pages: list[list[dict]], expire_at: int | None = None):
    """A Kube whose requests answer from PAGES (the continue token of page N is "N"); the first request for
    page EXPIRE_AT answers 410, as the API server does for an expired continue token."""
    from kubetune.reconcile.client import Kube

    kube = Kube(api=None, page_size=2)  # type: ignore[arg-type]
    seen: list[str | None] = []

    def request(method, path, query=None, **_):
        token = dict(query or []).get("continue")
        seen.append(token)
        if expire_at is not None and token == str(expire_at) and seen.count(token) == 1:
            raise ApiException(410, "Expired", json.dumps({"message": "continue token expired"}))
        n = int(token or 0)
        more = {"continue": str(n + 1)} if n + 1 < len(pages) else {}
        return {"items": pages[n], "metadata": more}

    kube.request = request  # type: ignore[method-assign]
    return kube, seen


def test_a_list_is_read_page_by_page_and_started_again_when_its_continue_token_expires():
    pages = [[{"n": 0}, {"n": 1}], [{"n": 2}, {"n": 3}], [{"n": 4}]]
    kube, _ = paged_kube(pages)
    assert [first for _, first in kube.pages("ConfigMap", "ns")] == [True, False, False]
    assert [o["n"] for o in kube.list("ConfigMap", "ns")] == [0, 1, 2, 3, 4]

    expiring, seen = paged_kube(pages, expire_at=2)
    got = list(expiring.pages("ConfigMap", "ns"))
    # page 0, page 1, then the token for page 2 expired: the list starts again from the first page
    assert [(first, [o["n"] for o in page]) for page, first in got] == [
        (True, [0, 1]), (False, [2, 3]), (True, [0, 1]), (False, [2, 3]), (False, [4])
    ]  # fmt: skip
    assert seen == [None, "1", "2", None, "1", "2"]
    # list() keeps only the consistent list
    assert [o["n"] for o in paged_kube(pages, expire_at=2)[0].list("ConfigMap", "ns")] == [0, 1, 2, 3, 4]
