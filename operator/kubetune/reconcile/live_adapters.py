"""Live LoRA adapters (engines that load them on running servers: vLLM): what each ready pod should
change, and what status says (pure).

The operator reads what each ready pod of the current revision has loaded (``GET /v1/models``: every
adapter's ``id`` and ``root``, the path it was loaded from), compares it with the adapters the spec
wants now, and plans changes per pod. reconcile/adapter_admin.py carries them out with the requests the
engine declares (``Engine.live_adapters``; vLLM's are described below).

The switch to a new version under the same served name (requests to it never fail):

1. ``POST /v1/load_lora_adapter {lora_name: "NAME@DIGEST", lora_path: NEW}`` -- the new version under a
   staging name of its own; clients never use it (adapter names are DNS labels, never contain "@").
2. A completion with the staging name (temperature 0) must answer and match ``expect``: a version that
   does not load or does not answer never reaches the served name.
3. ``POST /v1/load_lora_adapter {lora_name: NAME, lora_path: NEW, load_inplace: true}`` -- vLLM reads the
   new weights, then swaps them in under NAME's id while holding NAME's lock; NAME resolves at every
   moment (to the old weights before, to the new ones after). A failure here leaves the old version.
4. ``POST /v1/unload_lora_adapter {lora_name: "NAME@DIGEST"}``, then a completion with NAME.

A failure in 1-3 unloads the staging name, keeps the old version served and is remembered per adapter
(``servedAdapters[].failedDigest``): that version is not tried again until a new result arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.engines.base import Source, Sources
from kubetune.render.common import short_hash
from kubetune.render.modelserve import adapter_path_in_pod

STAGING_SEPARATOR = "@"


@dataclass(frozen=True)
class DesiredAdapter:
    """An adapter the spec wants served now, as a vLLM pod loads it."""

    name: str
    path: str
    """lora_path inside the pod (a mounted claim's path, a Hub id, or the init container's copy)."""
    uri: str
    digest: str

    @property
    def staging_name(self) -> str:
        return f"{self.name}{STAGING_SEPARATOR}{self.digest}"


@dataclass(frozen=True)
class PodState:
    """One ready vLLM pod of the current revision, and what it has loaded."""

    name: str
    address: str
    loaded: Mapping[str, str] | None = None
    """Adapter served name -> the path it was loaded from; None when the pod could not be asked."""
    error: str | None = None


@dataclass(frozen=True)
class AdapterChange:
    """One change on one pod."""

    pod: str
    address: str
    kind: Literal["load", "replace", "unload"]
    name: str
    path: str | None = None
    digest: str | None = None
    staging: str | None = None


@dataclass(frozen=True)
class ChangeOutcome:
    change: AdapterChange
    error: str | None = None
    """Why it failed (vLLM's message or the check's), None when it worked."""


@dataclass
class Plan:
    changes: list[AdapterChange] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    """'pod: why' for ready pods that could not be asked what they have loaded."""


def digest_of(uri: str, source: str | None) -> str:
    """A short hash naming one version of an adapter (a new result has a new URI or config hash)."""
    return short_hash({"uri": uri, "source": source}, 10)


def desired_adapters(resolution: Sources) -> list[DesiredAdapter]:
    return [
        DesiredAdapter(a.name or "", adapter_path_in_pod(a), a.uri, digest_of(a.uri, a.source))
        for a in resolution.adapters
    ]


def plan(desired: Sequence[DesiredAdapter], pods: Iterable[PodState], failed: Mapping[str, str]) -> Plan:
    """The changes that bring every pod to DESIRED. FAILED: adapter name -> digest that failed before
    (not tried again). Unknown adapters and leftover staging names are unloaded."""
    out = Plan()
    wanted = {d.name for d in desired}
    for pod in pods:
        if pod.loaded is None:
            out.unreachable.append(f"{pod.name}: {pod.error or 'no answer'}")
            continue
        for d in desired:
            have = pod.loaded.get(d.name)
            if have == d.path or failed.get(d.name) == d.digest:
                continue
            kind: Literal["load", "replace"] = "load" if have is None else "replace"
            out.changes.append(
                AdapterChange(pod.name, pod.address, kind, d.name, d.path, d.digest, d.staging_name)
            )
        # Adapters no longer wanted, and staging names left by an interrupted switch (a switch starts
        # and ends within one pass).
        for name in sorted(pod.loaded):
            if name not in wanted:
                out.changes.append(AdapterChange(pod.name, pod.address, "unload", name))
    return out


def served_adapters(
    desired: Sequence[DesiredAdapter],
    pods: Sequence[PodState],
    previous: Sequence[Mapping[str, Any]],
    outcomes: Sequence[ChangeOutcome],
) -> list[dict[str, Any]]:
    """status.servedAdapters: per adapter, the version the pods serve and on how many it is loaded.

    While a new version is on no pod yet (or failed), the entry keeps the version served before.
    """
    before = {p.get("name"): p for p in previous}
    failures = {
        o.change.name: (o.change.digest, o.error) for o in outcomes if o.error and o.change.kind != "unload"
    }
    asked = [p for p in pods if p.loaded is not None]
    entries = []
    for d in desired:
        old = dict(before.get(d.name) or {})
        on_new = sum(1 for p in asked if (p.loaded or {}).get(d.name) == d.path)
        entry: dict[str, Any] = {"name": d.name, "uri": d.uri, "digest": d.digest, "loadedOnPods": on_new,
                                 "desiredPods": len(pods)}  # fmt: skip
        if on_new == 0 and old.get("uri") and old.get("digest") != d.digest:
            old_path = adapter_path_in_pod(Source(d.name, old["uri"]))
            on_old = sum(1 for p in asked if (p.loaded or {}).get(d.name) == old_path)
            if on_old:
                entry.update(uri=old["uri"], digest=old["digest"], loadedOnPods=on_old)
        if d.name in failures:
            entry.update(failedDigest=failures[d.name][0], message=failures[d.name][1])
        elif old.get("failedDigest") == d.digest:
            entry.update(failedDigest=old["failedDigest"], message=old.get("message"))
        entries.append(entry)
    return entries


def failed_digests(previous: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {
        str(p["name"]): str(p["failedDigest"]) for p in previous if p.get("name") and p.get("failedDigest")
    }
