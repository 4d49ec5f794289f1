"""vLLM's runtime LoRA endpoints on one pod, through the ``openai`` client (the I/O of live adapters).

Request and answer shapes are vLLM's (vllm/entrypoints/openai, serving_models.py): ``POST
/v1/load_lora_adapter {lora_name, lora_path, load_inplace}`` and ``POST /v1/unload_lora_adapter
{lora_name}`` answer 200 with a plain-text "Success: ..." or an error ``{"error": {"message", "type",
"param", "code"}}`` (400 already loaded / bad input, 404 unknown adapter, 500 the engine failed to load).
The scheme (staging name, check, in-place switch) is explained in reconcile/vllm_adapters.py.
"""

from __future__ import annotations

import contextlib
import logging

import openai

from .openai_check import client, complete_once, describe_error
from .vllm_adapters import AdapterChange, ChangeOutcome, PodState

log = logging.getLogger("kubetune.modelserve.vllm")


class PodAdmin:
    """The vLLM server of one pod."""

    def __init__(self, address: str, timeout: float, attempts: int = 2) -> None:
        self.address = address
        self.api = client(address, timeout, attempts)

    def loaded(self) -> dict[str, str]:
        """Adapter served name -> the path it was loaded from (vLLM lists adapters with a parent model)."""
        return {
            m.id: str(getattr(m, "root", "") or "")
            for m in self.api.models.list().data
            if getattr(m, "parent", None)
        }

    def load(self, name: str, path: str, *, inplace: bool = False) -> None:
        body = {"lora_name": name, "lora_path": path, **({"load_inplace": True} if inplace else {})}
        self.api.post("/load_lora_adapter", cast_to=str, body=body)

    def unload(self, name: str) -> None:
        self.api.post("/unload_lora_adapter", cast_to=str, body={"lora_name": name})

    def unload_quietly(self, name: str) -> None:
        """Unload a name that may not be loaded (vLLM keeps nothing of a failed load): 404 is fine."""
        with contextlib.suppress(openai.NotFoundError):
            self.unload(name)


def observe_pod(name: str, address: str, timeout: float) -> PodState:
    try:
        return PodState(name, address, PodAdmin(address, timeout).loaded())
    except openai.OpenAIError as error:
        return PodState(name, address, None, describe_error(error))


def apply_change(
    change: AdapterChange, *, prompt: str, max_tokens: int, expect: str | None, timeout: float
) -> ChangeOutcome:
    """Carry out CHANGE on its pod; a failure leaves the served name as it was."""
    pod = PodAdmin(change.address, timeout)
    try:
        if change.kind == "unload":
            pod.unload_quietly(change.name)
            return ChangeOutcome(change)
        assert change.path is not None and change.staging is not None
        if change.kind == "load":
            # A new name: nobody uses it yet, so it is loaded under its own name and checked there.
            return _load_checked(pod, change, change.name, prompt, max_tokens, expect, inplace=False)
        outcome = _load_checked(pod, change, change.staging, prompt, max_tokens, expect, inplace=False)
        if outcome.error:
            return outcome
        try:
            pod.load(change.name, change.path, inplace=True)
        finally:
            pod.unload_quietly(change.staging)
        check = complete_once(pod.api, target=f"adapter {change.name}", model=change.name, prompt=prompt,
                              max_tokens=max_tokens, expect=expect)  # fmt: skip
        if not check.ok:
            return ChangeOutcome(change, f"after the switch on pod {change.pod}: {check.describe()}")
        return ChangeOutcome(change)
    except openai.OpenAIError as error:
        return ChangeOutcome(change, f"pod {change.pod}: {describe_error(error)}")


def _load_checked(
    pod: PodAdmin,
    change: AdapterChange,
    name: str,
    prompt: str,
    max_tokens: int,
    expect: str | None,
    *,
    inplace: bool,
) -> ChangeOutcome:
    """Load CHANGE's version under NAME and check one completion with it; on failure unload NAME again."""
    assert change.path is not None
    try:
        pod.load(name, change.path, inplace=inplace)
    except openai.OpenAIError as error:
        pod.unload_quietly(name)
        return ChangeOutcome(change, f"loading {change.path} on pod {change.pod}: {describe_error(error)}")
    check = complete_once(pod.api, target=f"adapter {name}", model=name, prompt=prompt, max_tokens=max_tokens,
                          expect=expect)  # fmt: skip
    if not check.ok:
        pod.unload_quietly(name)
        return ChangeOutcome(change, f"{change.path} loaded on pod {change.pod} but {check.describe()}")
    return ChangeOutcome(change)
