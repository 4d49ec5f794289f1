"""Live LoRA adapters (engines that load them on running servers: vLLM): what each ready pod should
change, and what status says (pure).

The operator reads what each ready pod of the current revision has loaded (``GET /v1/models``: every
adapter's ``id`` and ``root``, the path it was loaded from), compares it with the adapters the spec
wants now, and plans changes per pod. reconcile/adapter_admin.py carries them out with the requests the
engine declares (``Engine.live_adapters``; vLLM's are described below).

A version is what was trained: its digest (``digest_of``: the result's location and its FineTuneJob run,
config hash and uid), never its path alone -- a re-run writes its new adapter to the same output URI. Each
served version is loaded twice on a pod: under the served name NAME, and under its own VERSION NAME
``NAME@DIGEST`` (adapter names are DNS labels, never contain "@"). The version name is how a pod says which
version it serves (a path does not: it stays the same across runs), and what a client that needs one
version per request asks for. A pod is up to date for an adapter when both names are loaded from the
wanted path; NAME without the wanted version name (a pod that just started with --lora-modules, or one
that serves another version) gets the switch:

1. ``POST /v1/load_lora_adapter {lora_name: "NAME@DIGEST", lora_path: NEW}``: the new version under its
   version name.
2. A completion with the version name (temperature 0) must answer and match ``expect``: a version that
   does not load or does not answer never reaches the served name.
3. ``POST /v1/unload_lora_adapter {lora_name: NAME}``, then ``POST /v1/load_lora_adapter {lora_name: NAME,
   lora_path: NEW}`` (for a new NAME: the load alone). Not vLLM's in-place reload (``load_inplace``): vLLM
   keeps that flag on the name, and every later batch with NAME would then read the adapter from its path
   again -- where the FineTuneJob's next run writes (engines/vllm.py).
4. A completion with NAME; then, once the pod is up to date, the next pass unloads the previous version's
   name (``NAME@OLD``) and names no longer wanted.

What a client sees during the switch (docs/operations.md): between the unload and the load of step 3 (the
time vLLM takes to read the adapter: milliseconds for small adapters), NAME is unknown (404, "does not
exist"); a request that starts after step 3 is answered by the new version, one in flight during it may be
generated partly by each (vLLM reads an unloaded adapter again from its path for requests still using it).
``NAME@DIGEST`` answers throughout and gives one version per request: its weights never change. vLLM keeps every loaded name in CPU
memory (``--max-cpu-loras``, sized for three names per adapter), so nothing is read from a path again once
loaded.

A failure in 1-3 unloads the new version name, keeps the old version served and is remembered per adapter
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
"""Between an adapter's served name and its version in the version name (NAME@DIGEST)."""


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
        """The version name, NAME@DIGEST: where a new version is loaded and checked, and stays."""
        return version_name(self.name, self.digest)


def version_name(name: str, digest: str) -> str:
    return f"{name}{STAGING_SEPARATOR}{digest}"


def serves(loaded: Mapping[str, str] | None, name: str, digest: str, path: str) -> bool:
    """Whether a pod that has LOADED serves version DIGEST (at PATH) under NAME: both names, from PATH."""
    have = loaded or {}
    return have.get(name) == path and have.get(version_name(name, digest)) == path


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
    (not tried again). Names no longer wanted are unloaded, and so are other versions' names of an adapter
    once the pod serves the wanted version (until then they say what it serves)."""
    out = Plan()
    for pod in pods:
        if pod.loaded is None:
            out.unreachable.append(f"{pod.name}: {pod.error or 'no answer'}")
            continue
        keep: set[str] = set()
        for d in desired:
            keep.add(d.name)
            if serves(pod.loaded, d.name, d.digest, d.path):
                keep.add(d.staging_name)
                continue
            keep.update(n for n in pod.loaded if n.startswith(d.name + STAGING_SEPARATOR))
            if failed.get(d.name) == d.digest:
                continue
            kind: Literal["load", "replace"] = "load" if d.name not in pod.loaded else "replace"
            out.changes.append(
                AdapterChange(pod.name, pod.address, kind, d.name, d.path, d.digest, d.staging_name)
            )
        for name in sorted(pod.loaded):
            if name not in keep:
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
        on_new = sum(1 for p in asked if serves(p.loaded, d.name, d.digest, d.path))
        entry: dict[str, Any] = {"name": d.name, "uri": d.uri, "digest": d.digest, "loadedOnPods": on_new,
                                 "desiredPods": len(pods)}  # fmt: skip
        if on_new == 0 and old.get("uri") and old.get("digest") and old.get("digest") != d.digest:
            old_path = adapter_path_in_pod(Source(d.name, old["uri"]))
            on_old = sum(1 for p in asked if serves(p.loaded, d.name, old["digest"], old_path))
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
