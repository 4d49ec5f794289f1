"""Live adapter changes on one pod's server, through the ``openai`` client (the I/O of live adapters).

What to send is the engine's (``Engine.live_adapters``: vLLM's runtime LoRA endpoints, engines/vllm.py);
the scheme (version name, check, switch) is explained in reconcile/live_adapters.py. The engine's
server speaks the OpenAI API: a completion under an adapter's served name checks it.
"""

from __future__ import annotations

import contextlib
import logging

import openai

from kubetune.engines.base import LiveAdapterApi

from .live_adapters import AdapterChange, ChangeOutcome, PodState
from .openai_check import client, complete_once, describe_error

log = logging.getLogger("kubetune.modelserve.adapters")


class PodAdmin:
    """The server of one pod."""

    def __init__(self, ops: LiveAdapterApi, address: str, timeout: float, attempts: int = 2) -> None:
        self.ops = ops
        self.address = address
        self.api = client(address, timeout, attempts)

    def loaded(self) -> dict[str, str]:
        """Adapter served name -> the path it was loaded from."""
        return self.ops.loaded([m.model_dump() for m in self.api.models.list().data])

    def load(self, name: str, path: str) -> None:
        where, body = self.ops.load_request(name, path)
        self.api.post(where, cast_to=str, body=body)

    def unload(self, name: str) -> None:
        where, body = self.ops.unload_request(name)
        self.api.post(where, cast_to=str, body=body)

    def unload_quietly(self, name: str) -> None:
        """Unload a name that may not be loaded (the server keeps nothing of a failed load): 404 is fine."""
        with contextlib.suppress(openai.NotFoundError):
            self.unload(name)


def observe_pod(name: str, address: str, timeout: float, *, ops: LiveAdapterApi) -> PodState:
    """What the pod's server has loaded (OPS: its engine's live adapter API)."""
    try:
        return PodState(name, address, PodAdmin(ops, address, timeout).loaded())
    except openai.OpenAIError as error:
        return PodState(name, address, None, describe_error(error))


def apply_change(
    change: AdapterChange,
    *,
    ops: LiveAdapterApi,
    prompt: str,
    max_tokens: int,
    expect: str | None,
    timeout: float,
) -> ChangeOutcome:
    """Carry out CHANGE on its pod; a failure leaves the served name as it was."""
    pod = PodAdmin(ops, change.address, timeout)
    try:
        if change.kind == "unload":
            pod.unload_quietly(change.name)
            return ChangeOutcome(change)
        assert change.path is not None and change.staging is not None
        # The version under its version name first, checked there: clients of NAME never see a version that
        # does not load or answer.
        outcome = _load_checked(pod, change, change.staging, prompt, max_tokens, expect)
        if outcome.error:
            return outcome
        try:
            # A new NAME is loaded; a served one is unloaded and loaded again from the new path (never in
            # place: engines/vllm.py says why), so it is unknown to the server for the time the load takes.
            if change.kind == "replace":
                pod.unload_quietly(change.name)
            pod.load(change.name, change.path)
        except openai.OpenAIError:
            pod.unload_quietly(change.staging)  # the version name must not claim what NAME does not serve
            raise
        check = complete_once(pod.api, target=f"adapter {change.name}", model=change.name, prompt=prompt,
                              max_tokens=max_tokens, expect=expect)  # fmt: skip
        if not check.ok:
            return ChangeOutcome(change, f"after the switch on pod {change.pod}: {check.describe()}")
        return ChangeOutcome(change)
    except openai.OpenAIError as error:
        return ChangeOutcome(change, f"pod {change.pod}: {describe_error(error)}")


def _load_checked(
    pod: PodAdmin, change: AdapterChange, name: str, prompt: str, max_tokens: int, expect: str | None
) -> ChangeOutcome:
    """Load CHANGE's version under NAME and check one completion with it; on failure unload NAME again."""
    assert change.path is not None
    try:
        pod.load(name, change.path)
    except openai.OpenAIError as error:
        pod.unload_quietly(name)
        return ChangeOutcome(change, f"loading {change.path} on pod {change.pod}: {describe_error(error)}")
    check = complete_once(pod.api, target=f"adapter {name}", model=name, prompt=prompt, max_tokens=max_tokens,
                          expect=expect)  # fmt: skip
    if not check.ok:
        pod.unload_quietly(name)
        return ChangeOutcome(change, f"{change.path} loaded on pod {change.pod} but {check.describe()}")
    return ChangeOutcome(change)
