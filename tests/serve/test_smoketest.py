"""The smoke test client (huggingface_hub InferenceClient) against the loopback TGI-protocol server,
which serves a tiny causal LM and a LoRA adapter trained in the session."""

from __future__ import annotations

import json
import urllib.request

import pytest

from kubetune.reconcile.smoketest import SmokeTestUnavailable, run_smoke_test

pytestmark = pytest.mark.slow


def test_tgi_server_speaks_the_protocol(tgi):
    with urllib.request.urlopen(f"{tgi.url}/info") as resp:
        info = json.load(resp)
    assert info["lora_adapters"] == ["support"] and info["max_total_tokens"] > 0
    body = json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 8, "details": True}}).encode()
    req = urllib.request.Request(f"{tgi.url}/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        out = json.load(resp)
    details = out["details"]
    assert 1 <= details["generated_tokens"] == len(details["tokens"]) <= 8
    # The trained model ends its sentence with EOS, as TGI reports it; else it ran out of tokens.
    assert details["finish_reason"] == ("eos_token" if details["generated_tokens"] < 8 else "length")
    assert out["generated_text"].startswith("kubetune world says")  # what the trainer taught the model


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


def test_unknown_adapter_is_a_validation_error(tgi, hub_online):
    result = run_smoke_test(tgi.url, prompt="hello", max_new_tokens=2, adapters=["nope"])
    assert [r.ok for r in result.results] == [True, False]
    assert "adapter nope: ValidationError: Adapter 'nope' is not loaded" in result.message


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
