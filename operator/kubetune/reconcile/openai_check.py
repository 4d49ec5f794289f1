"""The vLLM smoke test: real calls through the ``openai`` client against vLLM's OpenAI-compatible server.

1. ``GET /v1/models`` must list the base model (served under the ModelServe's name) and every adapter.
2. One completion per target (the base model and each adapter, by name), temperature 0 and a few
   tokens, whose text must match ``expect`` (a regular expression, ``re.search``).

The client retries connection errors, 408/409/429 and 5xx answers itself (``max_retries``); what is
left is the model's answer. The result has the same shape as the TGI smoke test's (SmokeTestResult), so
rollouts are gated and rolled back alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import openai

from kubetune.engines.smoke import (
    DEFAULT_ATTEMPTS,
    DEFAULT_TIMEOUT_SECONDS,
    SmokeTestResult,
    TargetResult,
    judge,
)


def client(
    base_url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS, attempts: int = DEFAULT_ATTEMPTS
) -> openai.OpenAI:
    """An OpenAI client for a vLLM server at BASE_URL (scheme://host:port, without /v1)."""
    # vLLM only checks the key when started with --api-key; the client insists on one.
    return openai.OpenAI(
        base_url=base_url.rstrip("/") + "/v1",
        api_key="kubetune",
        timeout=timeout,
        max_retries=max(0, attempts - 1),
    )


def describe_error(error: BaseException) -> str:
    """One line: the client's error class, the HTTP status and vLLM's own message."""
    if isinstance(error, openai.APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        message = body.get("message") or error.message
        return f"{type(error).__name__} (HTTP {error.status_code}): {str(message)[:300]}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def complete_once(
    api: openai.OpenAI, *, target: str, model: str, prompt: str, max_tokens: int, expect: str | None
) -> TargetResult:
    """One completion with MODEL (the base model's or an adapter's served name), checked against EXPECT."""
    started = time.monotonic()
    try:
        out = api.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    except openai.OpenAIError as error:
        return TargetResult(target, False, error=describe_error(error), seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    text = out.choices[0].text if out.choices else ""
    tokens = out.usage.completion_tokens if out.usage else None
    return judge(target, text, tokens, expect, seconds)


def run_openai_smoke_test(
    endpoint: str,
    *,
    served_model: str,
    prompt: str,
    max_new_tokens: int,
    expect: str | None = None,
    adapters: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    attempts: int = DEFAULT_ATTEMPTS,
) -> SmokeTestResult:
    """The model list, then one completion for SERVED_MODEL and for each adapter, at ENDPOINT."""
    api = client(endpoint, timeout, attempts)
    result = SmokeTestResult(endpoint)
    started = time.monotonic()
    try:
        listed = {m.id for m in api.models.list().data}
    except openai.OpenAIError as error:
        result.results.append(
            TargetResult(
                "GET /v1/models", False, error=describe_error(error), seconds=time.monotonic() - started
            )
        )
        return result
    missing = [name for name in (served_model, *adapters) if name not in listed]
    result.results.append(
        TargetResult(
            "GET /v1/models",
            not missing,
            output=", ".join(sorted(listed)),
            error=f"lists {sorted(listed)} but not {missing}" if missing else None,
            seconds=time.monotonic() - started,
        )
    )
    if missing:
        return result
    targets = [("base model", served_model)] + [(f"adapter {name}", name) for name in adapters]
    for target, model in targets:
        result.results.append(
            complete_once(
                api, target=target, model=model, prompt=prompt, max_tokens=max_new_tokens, expect=expect
            )
        )
    return result
