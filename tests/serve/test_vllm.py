"""vLLM's OpenAI-compatible protocol, the operator's vLLM smoke test and its live adapter switch, against
the loopback vLLM-protocol server serving the tiny model and LoRA adapter trained by the kubetune trainer.

Clients are the real ones: the ``openai`` package (what the operator uses) and plain HTTP for the shapes.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from kubetune.engines.vllm import VLLM
from kubetune.reconcile.adapter_admin import apply_change, observe_pod
from kubetune.reconcile.live_adapters import AdapterChange, DesiredAdapter, plan
from kubetune.reconcile.openai_check import client, run_openai_smoke_test

V1 = "/mnt/pvc/models/support/v1"
V2 = "/mnt/pvc/models/support/v2"
BROKEN = "/mnt/pvc/models/support/broken"


def post(url: str, body: dict) -> tuple[int, str, str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_server_speaks_vllms_protocol(vllm):
    api = client(vllm.pod_url("p1"))
    models = api.models.list().data
    assert [(m.id, getattr(m, "parent", None)) for m in models] == [("bot", None), ("support", "bot")]
    assert getattr(models[1], "root", None) == V1
    base = api.completions.create(model="bot", prompt="hello", max_tokens=6, temperature=0)
    tuned = api.completions.create(model="support", prompt="hello", max_tokens=6, temperature=0)
    assert base.choices[0].text.strip().startswith("kubetune world")
    assert tuned.choices[0].text.strip().startswith("kubetune support")
    assert tuned.usage is not None and tuned.usage.completion_tokens == 6

    # vLLM's error shapes, through the client and raw.
    with pytest.raises(openai.NotFoundError) as missing:
        api.completions.create(model="nope", prompt="hello", max_tokens=2)
    assert missing.value.body == {
        "message": "The model `nope` does not exist.", "type": "NotFoundError", "param": "model", "code": 404,
    }  # fmt: skip
    chat = api.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "hello"}], max_tokens=3, temperature=0
    )
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str) and chat.choices[0].finish_reason in (
        "stop",
        "length",
    )
    assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 3
    status, ctype, text = post(
        f"{vllm.pod_url('p1')}/v1/load_lora_adapter", {"lora_name": "support", "lora_path": V2}
    )
    assert (
        status == 400 and json.loads(text)["error"]["type"] == "InvalidUserInput" and "load_inplace" in text
    )
    status, _, text = post(f"{vllm.pod_url('p1')}/v1/unload_lora_adapter", {"lora_name": "other"})
    assert (
        status == 404 and json.loads(text)["error"]["message"] == "The lora adapter 'other' cannot be found."
    )
    status, _, text = post(
        f"{vllm.pod_url('p1')}/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/nowhere"}
    )
    assert status == 404 and "No adapter found for /nowhere" in text
    status, ctype, text = post(
        f"{vllm.pod_url('p1')}/v1/load_lora_adapter", {"lora_name": "x", "lora_path": V2}
    )
    assert (status, text) == (200, "Success: LoRA adapter 'x' added successfully.") and ctype.startswith(
        "text/plain"
    )
    status, _, text = post(f"{vllm.pod_url('p1')}/v1/unload_lora_adapter", {"lora_name": "x"})
    assert (status, text) == (200, "Success: LoRA adapter 'x' removed successfully.")
    # Pods are separate vLLM processes: p2 started with its own --lora-modules and knows nothing of p1's.
    assert vllm.loaded("p2") == {"support": V1}


def test_the_smoke_test_lists_models_and_completes_per_adapter(vllm):
    ok = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=6,
                               expect=r"^ ?kubetune\b", adapters=["support"])  # fmt: skip
    assert ok.ok, ok.message
    assert [r.target for r in ok.results] == ["GET /v1/models", "base model", "adapter support"]
    assert "adapter support: generated ' kubetune support" in ok.message or "kubetune support" in ok.message

    missing = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=4,
                                    adapters=["support", "billing"])  # fmt: skip
    assert not missing.ok and "but not ['billing']" in missing.message

    vllm.set_mode("wrong", "I am a teapot")
    wrong = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=4,
                                  expect="kubetune", adapters=["support"])  # fmt: skip
    assert not wrong.ok and "output 'I am a teapot' does not match expect 'kubetune'" in wrong.message
    vllm.set_mode("error")
    failed = run_openai_smoke_test(vllm.url, served_model="bot", prompt="hello", max_new_tokens=4, attempts=1)
    assert not failed.ok and "InternalServerError (HTTP 500): CUDA error" in failed.message


def desired(path: str, digest: str) -> DesiredAdapter:
    return DesiredAdapter("support", path, f"pvc://{path.removeprefix('/mnt/pvc/')}", digest)


def test_a_new_version_is_switched_in_without_a_failed_request(vllm):
    pod = observe_pod("p1", vllm.pod_url("p1"), 10, ops=VLLM.live_adapters)
    assert pod.loaded == {"support": V1}
    todo = plan([desired(V2, "d2")], [pod], failed={})
    assert todo.changes == [
        AdapterChange("p1", vllm.pod_url("p1"), "replace", "support", V2, "d2", "support@d2")
    ]

    # Requests to the served name keep going during the switch: not one may fail.
    api = client(vllm.pod_url("p1"), attempts=1)
    errors: list[str] = []
    answered = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                api.completions.create(model="support", prompt="hello", max_tokens=2, temperature=0)
                answered += 1
            except openai.OpenAIError as error:
                errors.append(repr(error))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        outcome = apply_change(
            todo.changes[0],
            ops=VLLM.live_adapters,
            prompt="hello",
            max_tokens=6,
            expect="kubetune",
            timeout=30,
        )
    finally:
        stop.set()
        worker.join()
    assert outcome.error is None
    assert errors == [] and answered > 0
    assert vllm.loaded("p1") == {"support": V2}  # the staging name is gone
    steps = [(r["path"], r["body"].get("lora_name") or r["body"].get("model"), r["body"].get("load_inplace"))
             for r in vllm.requests if r["pod"] == "p1" and r["body"].get("model") != "support"
             or r["path"].endswith("lora_adapter")]  # fmt: skip
    assert steps == [
        ("/v1/load_lora_adapter", "support@d2", None),
        ("/v1/completions", "support@d2", None),
        ("/v1/load_lora_adapter", "support", True),
        ("/v1/unload_lora_adapter", "support@d2", None),
    ]
    # Nothing left to do.
    assert (
        plan(
            [desired(V2, "d2")],
            [observe_pod("p1", vllm.pod_url("p1"), 10, ops=VLLM.live_adapters)],
            failed={},
        ).changes
        == []
    )


def test_a_version_that_does_not_load_leaves_the_served_one(vllm):
    pod = observe_pod("p1", vllm.pod_url("p1"), 10, ops=VLLM.live_adapters)
    (change,) = plan([desired(BROKEN, "bad")], [pod], failed={}).changes
    outcome = apply_change(
        change, ops=VLLM.live_adapters, prompt="hello", max_tokens=4, expect=None, timeout=30
    )
    assert outcome.error is not None and "InternalServerError (HTTP 500)" in outcome.error
    assert BROKEN in outcome.error
    assert vllm.loaded("p1") == {"support": V1}
    # A version that failed is not planned again until another one is wanted.
    assert plan([desired(BROKEN, "bad")], [pod], failed={"support": "bad"}).changes == []


def test_removal_and_addition(vllm):
    pod = observe_pod("p1", vllm.pod_url("p1"), 10, ops=VLLM.live_adapters)
    other = DesiredAdapter("support-b", "/mnt/pvc/models/support-b/v1", "pvc://models/support-b/v1", "b1")
    todo = plan([other], [pod], failed={})
    assert sorted((c.kind, c.name) for c in todo.changes) == [("load", "support-b"), ("unload", "support")]
    for change in todo.changes:
        assert (
            apply_change(
                change, ops=VLLM.live_adapters, prompt="hello", max_tokens=4, expect="kubetune", timeout=30
            ).error
            is None
        )
    assert vllm.loaded("p1") == {"support-b": "/mnt/pvc/models/support-b/v1"}
