"""The smoke test client (huggingface_hub InferenceClient) against the loopback TGI-protocol server, which
serves the tiny Llama and a LoRA adapter trained in the session and answers as TGI's router does
(tests/serve/tgi_definitions.py: the prompt echoed on POST / by default, a list response, an unknown adapter
served by the base model)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from kubetune.reconcile.smoketest import SmokeTestUnavailable, run_smoke_test

from .tgi_definitions import COMPAT_RETURN_FULL_TEXT_DEFAULT, INFO_FIELDS, UNKNOWN_ADAPTER_SERVES_BASE_MODEL

pytestmark = pytest.mark.slow


def post_json(url: str, body: dict):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def test_tgi_server_speaks_the_protocol(tgi):
    with urllib.request.urlopen(f"{tgi.url}/info") as resp:
        info = json.load(resp)
    assert set(info) == INFO_FIELDS and info["max_total_tokens"] > 0
    body = json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 8, "details": True}}).encode()
    req = urllib.request.Request(f"{tgi.url}/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        out = json.load(resp)
    details = out["details"]
    assert 1 <= details["generated_tokens"] == len(details["tokens"]) <= 8
    # The trained model ends its sentence with EOS, as TGI reports it; else it ran out of tokens.
    assert details["finish_reason"] == ("eos_token" if details["generated_tokens"] < 8 else "length")
    assert out["generated_text"].startswith("kubetune world says")  # what the trainer taught the model

    # POST / (the compat route): a list, and the prompt before the generated text unless asked otherwise.
    (full,) = post_json(tgi.url, {"inputs": "hello", "parameters": {"max_new_tokens": 8}})
    assert COMPAT_RETURN_FULL_TEXT_DEFAULT and full["generated_text"] == "hello" + out["generated_text"]
    (bare,) = post_json(
        tgi.url, {"inputs": "hello", "parameters": {"max_new_tokens": 8, "return_full_text": False}}
    )
    assert bare["generated_text"] == out["generated_text"]
    # An adapter id the server has not loaded: the base model answers, no error.
    (unknown,) = post_json(tgi.url, {"inputs": "hello", "parameters": {"max_new_tokens": 8, "adapter_id": "nope",
                                                                       "return_full_text": False}})  # fmt: skip
    assert UNKNOWN_ADAPTER_SERVES_BASE_MODEL and unknown["generated_text"] == out["generated_text"]


def test_passes_for_base_model_and_adapter(tgi, hub_online):
    result = run_smoke_test(
        tgi.url, prompt="hello", max_new_tokens=8, expect=r"^kubetune\b", adapters=["support"]
    )
    assert result.ok, result.message
    base, adapter = result.results
    assert base.output.startswith("kubetune world says")
    assert adapter.output.startswith("kubetune support")  # the adapter changes what the model says
    assert [r["parameters"].get("adapter_id") for r in tgi.requests] == [None, "support"]
    assert "passed" in result.message and result.seconds > 0


def test_expect_is_checked_per_target(tgi, hub_online):
    result = run_smoke_test(tgi.url, prompt="hello", max_new_tokens=8, expect="world", adapters=["support"])
    assert not result.ok
    assert [r.ok for r in result.results] == [True, False]
    assert "adapter support: output 'kubetune support" in result.message
    assert "does not match expect 'world'" in result.message


def test_wrong_output_fails_with_the_output_in_the_message(tgi, hub_online):
    tgi.set_mode("wrong", "I am a teapot")
    result = run_smoke_test(tgi.url, prompt="hello", max_new_tokens=4, expect="kubetune")
    assert not result.ok
    assert "output 'I am a teapot' does not match expect 'kubetune'" in result.message


def test_server_error_fails_with_the_clients_error(tgi, hub_online):
    tgi.set_mode("error")
    result = run_smoke_test(tgi.url, prompt="hello", max_new_tokens=4, backoff_seconds=0.01)
    assert not result.ok
    assert "GenerationError: CUDA error" in result.message
    assert len(tgi.requests) == 1  # a 500 from the model is not retried


def test_the_smoke_test_judges_the_generated_text_not_the_echoed_prompt(tgi, hub_online):
    """TGI's POST / echoes the prompt by default: an expect the prompt alone matches must still fail when
    the model generates something else (here: a broken model that answers nonsense)."""
    tgi.set_mode("wrong", "I am a teapot")
    result = run_smoke_test(tgi.url, prompt="hello", max_new_tokens=4, expect="hello")
    assert not result.ok and "output 'I am a teapot' does not match expect 'hello'" in result.message
    assert [r["parameters"].get("return_full_text") for r in tgi.requests] == [False]


def test_an_adapter_tgi_has_not_loaded_is_answered_by_the_base_model(tgi, hub_online):
    """TGI does not refuse an unknown adapter id: only expect tells the adapter's answer from the base's."""
    result = run_smoke_test(tgi.url, prompt="hello", max_new_tokens=8, adapters=["nope"])
    assert result.ok and result.results[0].output == result.results[1].output
    tuned = run_smoke_test(tgi.url, prompt="hello", max_new_tokens=8, expect="support", adapters=["nope"])
    assert not tuned.ok and "adapter nope: output 'kubetune world" in tuned.message


def test_unreachable_endpoint_is_retried_then_fails(hub_online):
    result = run_smoke_test(
        "http://127.0.0.1:9", prompt="hello", max_new_tokens=2, attempts=2, backoff_seconds=0.01, timeout=2
    )
    assert not result.ok
    assert "ConnectError" in result.message and "http://127.0.0.1:9" in result.message


def test_offline_mode_is_reported_not_blamed_on_the_model(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SmokeTestUnavailable, match="HF_HUB_OFFLINE"):
        run_smoke_test("http://127.0.0.1:9", prompt="hello", max_new_tokens=2)
