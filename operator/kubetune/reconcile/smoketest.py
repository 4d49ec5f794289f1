"""The smoke test: real generate calls through huggingface_hub's InferenceClient against a TGI endpoint.

huggingface_hub's ``InferenceClient.text_generation`` is the maintained TGI client (the old
``text-generation`` package is deprecated and pins huggingface_hub < 1.0). Given a URL as ``model`` it
POSTs TGI's native payload ``{"inputs", "parameters", "stream"}`` to that URL, and it passes
``adapter_id`` through ``parameters`` exactly as TGI's /generate expects, so one client covers the
base model and every LoRA adapter.

One generate per target: the base model (``adapter_id`` unset) and each adapter by name. Greedy
decoding, so the output is deterministic and ``expect`` (a regular expression, ``re.search``) is a fair
check (engines/smoke.py judges every engine's answers alike). Connection errors and 5xx overload answers
are retried a few times (a pod that just became Ready may still be warming up); a wrong output is not
retried.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from huggingface_hub import InferenceClient, constants
from huggingface_hub.errors import InferenceTimeoutError, OverloadedError, TextGenerationError

from kubetune.engines.smoke import (
    DEFAULT_ATTEMPTS,
    DEFAULT_TIMEOUT_SECONDS,
    SmokeTestResult,
    TargetResult,
    judge,
)


class SmokeTestUnavailable(RuntimeError):
    """The smoke test cannot run at all from this process (a setting of the operator, not the model)."""


def _describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    name = type(error).__name__
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None and str(status) not in first:
        name = f"{name} (HTTP {status})"
    return f"{name}: {first[:300]}" if first else name


def _retryable(error: BaseException) -> bool:
    """Transport errors, timeouts and "overloaded" answers may pass on a second try; answers of the
    model (a 500 from generation, a validation error, a wrong output) will not."""
    if isinstance(error, OverloadedError | InferenceTimeoutError):
        return True
    if isinstance(error, TextGenerationError):
        return False
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return status in (429, 502, 503, 504)
    return True  # connection refused/reset: the pod may be restarting


def generate_once(
    client: InferenceClient,
    *,
    target: str,
    prompt: str,
    max_new_tokens: int,
    expect: str | None,
    adapter_id: str | None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff_seconds: float = 1.0,
) -> TargetResult:
    """One generate call (retried on transport errors) and the check of its output against EXPECT."""
    started = time.monotonic()
    last_error: BaseException | None = None
    for attempt in range(max(1, attempts)):
        try:
            out = client.text_generation(
                prompt,
                max_new_tokens=max_new_tokens,
                adapter_id=adapter_id,
                do_sample=False,
                details=True,
                # The generated text only: TGI's POST / (where the client posts) puts the prompt before it
                # by default for a model without a pipeline tag, and an `expect` the prompt matches would
                # then pass whatever the model generated.
                return_full_text=False,
            )
        except Exception as error:  # the client raises many kinds; all of them fail the test
            last_error = error
            if attempt + 1 < attempts and _retryable(error):
                time.sleep(backoff_seconds * (2**attempt))
                continue
            break
        seconds = time.monotonic() - started
        tokens = out.details.generated_tokens if out.details else None
        return judge(target, out.generated_text, tokens, expect, seconds)
    assert last_error is not None
    return TargetResult(target, False, error=_describe_error(last_error), seconds=time.monotonic() - started)


def run_smoke_test(
    endpoint: str,
    *,
    prompt: str,
    max_new_tokens: int,
    expect: str | None = None,
    adapters: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff_seconds: float = 1.0,
) -> SmokeTestResult:
    """Generate once with the base model and once per adapter at ENDPOINT (a TGI base URL).

    Raises SmokeTestUnavailable when this process cannot make the calls at all; that says nothing
    about the model and must not trigger a rollback.
    """
    if constants.is_offline_mode():
        raise SmokeTestUnavailable(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set in the operator's environment, and "
            "huggingface_hub then refuses every HTTP call, including those to TGI; unset it for the "
            "operator (it never downloads models itself)"
        )
    client = InferenceClient(model=endpoint.rstrip("/"), timeout=timeout)
    result = SmokeTestResult(endpoint)
    targets: list[tuple[str, str | None]] = [("base model", None)]
    targets += [(f"adapter {name}", name) for name in adapters]
    for target, adapter_id in targets:
        result.results.append(
            generate_once(
                client,
                target=target,
                prompt=prompt,
                max_new_tokens=max_new_tokens,
                expect=expect,
                adapter_id=adapter_id,
                attempts=attempts,
                backoff_seconds=backoff_seconds,
            )
        )
    return result
