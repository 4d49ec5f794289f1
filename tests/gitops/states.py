"""FineTuneJobs and ModelServes in each state, as the operator writes their status (the kstatus contract:
Ready / Reconciling / Stalled next to the kind's own conditions, observedGeneration on the status and on
every condition), created on a real API server and written through the status subresource.

Each builder returns the status for generation GEN; ``create`` makes the object, writes that status and
returns the object as the API server has it (what Flux, Argo CD and kubectl read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.objects import GROUP, VERSION, Objects
from tests.support.waiting import wait_for

T0 = "2026-11-30T03:00:00Z"
T1 = "2026-11-30T03:20:00Z"


def cond(type_: str, status: str, reason: str, message: str = "", gen: int = 1) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": gen, "lastTransitionTime": T0}  # fmt: skip


def spec_of(kind: str, name: str) -> dict[str, Any]:
    if kind == "FineTuneJob":
        return {
            "model": {"uri": "hf://org/tiny"},
            "dataset": {"uri": "hf://org/data"},
            "output": {"uri": f"pvc://models/{name}"},
        }
    return {"model": {"uri": "hf://org/tiny"}, "resources": {"gpus": 0}}


# ----------------------------------------------------------------------------------- FineTuneJob


def ftj_pending(gen: int = 1) -> dict[str, Any]:
    return {"phase": "Pending", "observedGeneration": gen, "conditions": [
        cond("Validated", "True", "Valid", "", gen),
        cond("Reconciling", "True", "Starting", "Creating the trainer Job", gen),
        cond("Ready", "False", "Pending", "The run has not started", gen),
    ]}  # fmt: skip


def ftj_running(gen: int = 1) -> dict[str, Any]:
    return {
        "phase": "Running", "observedGeneration": gen, "jobName": "x-trainer", "startTime": T0, "attempts": 1,
        "conditions": [
            cond("Validated", "True", "Valid", "", gen),
            cond("Running", "True", "TrainerRunning", "1/1 trainer pods running", gen),
            cond("Reconciling", "True", "Running", "Training: step 40/100", gen),
            cond("Ready", "False", "Running", "Training is in progress", gen),
        ],
        "progress": {"step": 40, "totalSteps": 100, "epoch": 1.2, "percent": 40.0, "loss": 1.25,
                     "tokensPerSecond": 5120.5, "etaSeconds": 300.0, "updatedAt": T0},
    }  # fmt: skip


def ftj_succeeded(gen: int = 1) -> dict[str, Any]:
    return {
        "phase": "Succeeded", "observedGeneration": gen, "startTime": T0, "completionTime": T1, "attempts": 1,
        "conditions": [
            cond("Validated", "True", "Valid", "", gen),
            cond("Running", "False", "Finished", "", gen),
            cond("Succeeded", "True", "Completed", "Training finished", gen),
            cond("Reconciling", "False", "Succeeded", "", gen),
            cond("Ready", "True", "Succeeded", "Training finished; the result is at pvc://models/x", gen),
        ],
        "progress": {"step": 100, "totalSteps": 100, "epoch": 3.0, "percent": 100.0, "loss": 0.5, "updatedAt": T1},
        "result": {"uri": "pvc://models/x", "kind": "adapter"},
    }  # fmt: skip


def ftj_failed(gen: int = 1) -> dict[str, Any]:
    message = "The trainer failed 4 times (backoffLimit 3): CUDA out of memory"
    return {
        "phase": "Failed", "observedGeneration": gen, "startTime": T0, "completionTime": T1, "attempts": 4,
        "conditions": [
            cond("Validated", "True", "Valid", "", gen),
            cond("Failed", "True", "BackoffLimitExceeded", message, gen),
            cond("Reconciling", "False", "Failed", "", gen),
            cond("Stalled", "True", "BackoffLimitExceeded", message, gen),
            cond("Ready", "False", "Failed", message, gen),
        ],
    }  # fmt: skip


MISSING_PVC = "PersistentVolumeClaim models not found in this namespace; create it (waiting up to 2m)"


def ftj_waiting_for_pvc(gen: int = 1) -> dict[str, Any]:
    return {"phase": "Pending", "observedGeneration": gen, "conditions": [
        cond("Validated", "True", "Valid", "", gen),
        cond("Reconciling", "True", "WaitingForPVC", MISSING_PVC, gen),
        cond("Ready", "False", "WaitingForPVC", MISSING_PVC, gen),
    ]}  # fmt: skip


PVC_GAVE_UP = (
    "PersistentVolumeClaim models not found in this namespace for 2m; create it or fix spec.output.uri"
)


def ftj_stalled_on_pvc(gen: int = 1) -> dict[str, Any]:
    return {"phase": "Pending", "observedGeneration": gen, "conditions": [
        cond("Validated", "True", "Valid", "", gen),
        cond("Reconciling", "False", "PVCNotFound", "", gen),
        cond("Stalled", "True", "PVCNotFound", PVC_GAVE_UP, gen),
        cond("Ready", "False", "PVCNotFound", PVC_GAVE_UP, gen),
    ]}  # fmt: skip


def ftj_suspended(gen: int = 1) -> dict[str, Any]:
    return {"phase": "Suspended", "observedGeneration": gen, "conditions": [
        cond("Validated", "True", "Valid", "", gen),
        cond("Suspended", "True", "Suspended", "spec.suspend is true; resuming continues from step 40", gen),
        cond("Reconciling", "False", "Suspended", "", gen),
        cond("Ready", "False", "Suspended", "spec.suspend is true", gen),
    ]}  # fmt: skip


# ----------------------------------------------------------------------------------- ModelServe


def ms_rolling_out(gen: int = 1) -> dict[str, Any]:
    return {
        "phase": "Progressing", "observedGeneration": gen, "replicas": 1, "readyReplicas": 0,
        "endpoint": "http://x.ns.svc:80",
        "conditions": [
            cond("Progressing", "True", "RollingOut", "Rolling out revision abc123: 0/1 pods ready", gen),
            cond("Reconciling", "True", "RollingOut", "Rolling out revision abc123: 0/1 pods ready", gen),
            cond("Ready", "False", "RollingOut", "No revision is serving yet", gen),
            cond("Degraded", "False", "AsExpected", "", gen),
        ],
        "lastRollout": {"startedAt": T0},
    }  # fmt: skip


def ms_ready(gen: int = 1) -> dict[str, Any]:
    return {
        "phase": "Ready", "observedGeneration": gen, "replicas": 1, "readyReplicas": 1,
        "endpoint": "http://x.ns.svc:80", "revision": {"hash": "abc123", "model": "hf://org/tiny"},
        "conditions": [
            cond("Progressing", "False", "RolloutSucceeded", "", gen),
            cond("Reconciling", "False", "RolloutSucceeded", "", gen),
            cond("Ready", "True", "SmokeTestPassed", "Revision abc123 serves; the smoke test passed", gen),
            cond("Degraded", "False", "AsExpected", "", gen),
        ],
        "lastRollout": {"startedAt": T0, "finishedAt": T1, "result": "succeeded"},
    }  # fmt: skip


NO_PREVIOUS = (
    "Rollout of revision abc123 failed (smoke test: connection refused) and there is no previous revision"
)


def ms_failed_no_previous(gen: int = 1) -> dict[str, Any]:
    return {
        "phase": "Failed", "observedGeneration": gen, "replicas": 1, "readyReplicas": 0,
        "conditions": [
            cond("Progressing", "False", "RolloutFailed", NO_PREVIOUS, gen),
            cond("Reconciling", "False", "RolloutFailed", "", gen),
            cond("Stalled", "True", "RolloutFailed", NO_PREVIOUS, gen),
            cond("Ready", "False", "RolloutFailed", NO_PREVIOUS, gen),
            cond("Degraded", "False", "AsExpected", "", gen),
        ],
        "lastRollout": {"startedAt": T0, "finishedAt": T1, "result": "failed", "message": NO_PREVIOUS},
    }  # fmt: skip


ROLLED_BACK = "Revision def456 failed its smoke test; rolled back to abc123"


def ms_rolled_back(gen: int = 1) -> dict[str, Any]:
    return {
        "phase": "Degraded", "observedGeneration": gen, "replicas": 1, "readyReplicas": 1,
        "endpoint": "http://x.ns.svc:80", "revision": {"hash": "abc123"},
        "previousRevision": {"hash": "abc123"},
        "conditions": [
            cond("Progressing", "False", "RolledBack", ROLLED_BACK, gen),
            cond("Reconciling", "False", "RolledBack", "", gen),
            # What was asked for does not serve until a new result or a spec change (as the operator writes it).
            cond("Stalled", "True", "RolledBack", ROLLED_BACK, gen),
            cond("Ready", "True", "ServingPreviousRevision", "Revision abc123 serves", gen),
            cond("Degraded", "True", "RolledBack", ROLLED_BACK, gen),
        ],
        "lastRollout": {"startedAt": T0, "finishedAt": T1, "result": "rolled-back", "message": ROLLED_BACK},
    }  # fmt: skip


UNSUPPORTED = "tgi cannot serve a prefix-tuning result; use method lora and serve it as an adapter"


def ms_unsupported(gen: int = 1) -> dict[str, Any]:
    return {"phase": "Failed", "observedGeneration": gen, "conditions": [
        cond("Reconciling", "False", "UnsupportedByEngine", "", gen),
        cond("Stalled", "True", "UnsupportedByEngine", UNSUPPORTED, gen),
        cond("Ready", "False", "UnsupportedByEngine", UNSUPPORTED, gen),
    ]}  # fmt: skip


# --------------------------------------------------------------------------------- on the server


def create(api, namespace: str, kind: str, name: str, status: dict[str, Any] | None,
           finalizers: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Create KIND/NAME, write STATUS through the status subresource, return the object as stored."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name},
            "spec": spec_of(kind, name)}  # fmt: skip
    if finalizers:
        body["metadata"]["finalizers"] = finalizers
    objects = Objects(api, namespace, kind)
    objects.create(body)
    if status is not None:
        objects.patch_status(name, status)
    return objects.get(name)


def write_status(api, namespace: str, kind: str, name: str, status: dict[str, Any]) -> None:
    Objects(api, namespace, kind).patch_status(name, status)


def get(api, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return Objects(api, namespace, kind).get(name)


def bump_generation(api, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """A spec change the operator has not seen yet: generation + 1, status untouched."""
    patch = {"spec": {"backoffLimit": 5}} if kind == "FineTuneJob" else {"spec": {"replicas": 2}}
    objects = Objects(api, namespace, kind)
    objects.patch(name, patch)
    obj = objects.get(name)
    assert obj["metadata"]["generation"] == obj["status"]["observedGeneration"] + 1
    return obj


def deleting(api, namespace: str, kind: str, name: str, status: dict[str, Any]) -> tuple[dict, Callable]:
    """An object being deleted (held by a finalizer) and the function that lets it go."""
    create(api, namespace, kind, name, status, finalizers=["kubetune.io/test-hold"])
    objects = Objects(api, namespace, kind)
    objects.delete(name)
    obj = objects.get(name)
    assert obj["metadata"].get("deletionTimestamp")

    def release() -> None:
        objects.patch(name, {"metadata": {"finalizers": None}})
        wait_for(lambda: not objects.exists(name), 20, 0.2, f"{kind} {name} deleted once released")

    return obj, release


# name -> (kind, status builder): every state the tests look at.
STATES: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "ftj-pending": ("FineTuneJob", ftj_pending),
    "ftj-running": ("FineTuneJob", ftj_running),
    "ftj-succeeded": ("FineTuneJob", ftj_succeeded),
    "ftj-failed": ("FineTuneJob", ftj_failed),
    "ftj-waiting-for-pvc": ("FineTuneJob", ftj_waiting_for_pvc),
    "ftj-stalled-on-pvc": ("FineTuneJob", ftj_stalled_on_pvc),
    "ftj-suspended": ("FineTuneJob", ftj_suspended),
    "ms-rolling-out": ("ModelServe", ms_rolling_out),
    "ms-ready": ("ModelServe", ms_ready),
    "ms-failed-no-previous": ("ModelServe", ms_failed_no_previous),
    "ms-rolled-back": ("ModelServe", ms_rolled_back),
    "ms-unsupported": ("ModelServe", ms_unsupported),
}
