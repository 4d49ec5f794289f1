"""What a FineTuneJob's children say, in words a user can act on: pure readers of Jobs, pods, Secrets,
PVCs and refused writes, used by the decision (finetunejob_decision.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from kubetune.render.common import ATTEMPT_LABEL
from kubetune.render.finetunejob import SecretUse

IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def condition_of(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def condition_true(obj: dict[str, Any] | None, type_: str) -> bool:
    c = condition_of(obj, type_)
    return bool(c and c.get("status") == "True")


def attempt_of(job: dict[str, Any]) -> int:
    try:
        return int(labels_of(job).get(ATTEMPT_LABEL, "1"))
    except ValueError:
        return 1


def tail(text: str | None, limit: int = 300) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def refusal_advice(kind: str, code: int, message: str) -> str:
    """What to change, in words, for a refused write of a KIND child."""
    low = message.lower()
    if "exceeded quota" in low or ("quota" in low and code == 403):
        return "raise the namespace's ResourceQuota or free some of it"
    if "violates podsecurity" in low:
        return "allow the pod's needs in the namespace's pod-security.kubernetes.io/enforce level"
    if "admission webhook" in low or "validatingadmissionpolicy" in low or "denied" in low:
        return "change the FineTuneJob (or the policy) so the admission check accepts the " + kind
    if code == 403:
        return f"grant the operator's ServiceAccount access to {kind}s in this namespace"
    if code == 422 or code == 400:
        return f"change the FineTuneJob so that its {kind} is valid (name, labels, fields)"
    if code == 409:
        return f"remove the conflicting {kind} or rename the FineTuneJob"
    return "fix the cause and the operator retries"


def pod_problem(pods: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """Why the pods do not run, in words a user can act on (the scheduler's message, image pulls)."""
    for pod in pods:
        status = pod.get("status") or {}
        for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_REASONS:
                return (
                    "ImagePullFailed",
                    f"cannot pull image {cs.get('image')!r} ({waiting.get('reason')}: "
                    f"{tail(waiting.get('message'), 200)}): fix spec.image or spec.imagePullSecrets",
                )
            if waiting.get("reason") == "CreateContainerConfigError":
                return (
                    "ContainerConfigError",
                    f"pod {pod['metadata']['name']}: {tail(waiting.get('message'), 300)}: "
                    "fix the Secrets or spec.env the pod refers to",
                )
    for pod in pods:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return (
                    "Unschedulable",
                    f"pod {pod['metadata']['name']} cannot be scheduled: {c.get('message') or c.get('reason')}",
                )
    return None, None


class Disruption(NamedTuple):
    """A pod with the condition DisruptionTarget=True: it is being stopped by an eviction (the Eviction
    API: a drain, Kueue, a PodDisruptionBudget-aware tool), a preemption by the scheduler, a taint, the
    pod garbage collector or the kubelet (node pressure). The Job's podFailurePolicy ignores it."""

    pod: str
    reason: str
    message: str
    time: str | None


def disruptions(pods: list[dict[str, Any]]) -> list[Disruption]:
    """The disrupted pods among PODS, oldest disruption first."""
    found = []
    for pod in pods:
        c = condition_of(pod, "DisruptionTarget")
        if c and c.get("status") == "True":
            name = pod["metadata"]["name"]
            found.append(
                Disruption(
                    name, c.get("reason") or "Disrupted", c.get("message") or "", c.get("lastTransitionTime")
                )
            )
    return sorted(found, key=lambda d: (d.time or "", d.pod))


def latest_failed_create(events: list[dict[str, Any]], since: dt.datetime | None) -> str | None:
    """The message of the newest FailedCreate Event (the Job controller could not create a pod: the API
    server's refusal, quoting a ResourceQuota or PodSecurity) seen at or after SINCE; None when there is none."""

    def when(e: dict[str, Any]) -> dt.datetime | None:
        stamp = (
            e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp")
        )
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None

    fresh = [
        (t, e)
        for e in events
        if e.get("reason") == "FailedCreate" and (t := when(e)) is not None and (since is None or t >= since)
    ]
    if not fresh:
        return None
    return tail(max(fresh, key=lambda te: te[0])[1].get("message"), 600)


def failure_reason(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """Why a failed Job failed, from its pods (exit code, termination message) or its own condition."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Failed":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                detail = f": {tail(term.get('message'))}" if term.get("message") else ""
                return (
                    f"pod {pod['metadata']['name']} container {cs.get('name')} exited with code "
                    f"{term.get('exitCode')} ({term.get('reason') or 'Error'}){detail}"
                )
        status = pod.get("status") or {}
        if status.get("message") or status.get("reason"):
            words = f"{status.get('reason', '')} {status.get('message', '')}".strip()
            return f"pod {pod['metadata']['name']} failed: {words}"
    for type_ in ("Failed", "FailureTarget"):
        c = condition_of(job, type_)
        if c and c.get("status") == "True":
            return f"Job {job['metadata']['name']} failed ({c.get('reason')}): {c.get('message', '')}".strip()
    return f"Job {job['metadata']['name']} failed"


def reference_problems(
    uses: list[SecretUse],
    claims: list[str],
    secrets: dict[str, dict[str, Any] | None],
    pvcs: dict[str, dict[str, Any] | None],
    namespace: str | None,
) -> list[tuple[str, str]]:
    """What is wrong with the Secrets and PVCs the pods will need: (reason, message) per problem."""
    problems: list[tuple[str, str]] = []
    for use in uses:
        secret = secrets.get(use.name)
        if secret is None:
            problems.append(
                (
                    "SecretNotFound",
                    f"Secret {use.name!r} ({use.field}) not found in namespace "
                    f"{namespace}: create it or fix {use.field}.name",
                )
            )
            continue
        data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
        missing = [k for k in use.required_keys if k not in data]
        if missing:
            problems.append(
                (
                    "SecretKeyMissing",
                    f"Secret {use.name!r} ({use.field}) has no key "
                    f"{', '.join(missing)}: add it or set {use.field}.key",
                )
            )
    for claim in claims:
        pvc = pvcs.get(claim)
        if pvc is None:
            problems.append(
                (
                    "PVCNotFound",
                    f"PersistentVolumeClaim {claim!r} not found in namespace {namespace}: "
                    f"create it or fix the pvc:// URIs that name it",
                )
            )
        elif (pvc.get("status") or {}).get("phase") == "Lost":
            problems.append(
                (
                    "PVCLost",
                    f"PersistentVolumeClaim {claim!r} is Lost (its volume is gone): "
                    f"restore the volume or point the pvc:// URIs to another claim",
                )
            )
    return problems
