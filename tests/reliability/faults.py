"""Helpers of the operator and control-plane fault tests: bursts of FineTuneJobs, what the operator made
for each, and operators as subprocesses with their own namespace (never the session's rel-* operator)."""

from __future__ import annotations

import collections
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.support.objects import tiny_job
from tests.support.operator import Operator
from tests.support.waiting import wait_for

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
OWNER_LABEL = "kubetune.io/finetunejob"
# What one FineTuneJob (one node, suspended) gets: its children, all labelled with its name.
CHILD_KINDS = ("Job", "ConfigMap", "ServiceAccount", "Role", "RoleBinding")


def operator(kube, log_dir: Path, namespace: str, **env: str) -> Operator:
    """`kubetune operator` watching only NAMESPACE (not started)."""
    return Operator(kube.kubeconfig, log_dir, namespaces=namespace, **env)


def create_burst(kube, ns: str, names: list[str], threads: int = 8) -> None:
    """Create NAMES (suspended: the operator makes every child and status, no pod starts), in parallel."""
    co = client.CustomObjectsApi(kube.api)

    def create(name: str) -> None:
        co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, tiny_job(name, suspend=True))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, names))


def finetunejobs(kube, ns: str) -> dict[str, dict[str, Any]]:
    items = client.CustomObjectsApi(kube.api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)[
        "items"
    ]
    return {o["metadata"]["name"]: o for o in items}


def children(kube, ns: str) -> dict[str, collections.Counter[str]]:
    """Kind -> how many of that kind each FineTuneJob owns (by controller ownerReference)."""
    core, batch, rbac = (
        client.CoreV1Api(kube.api),
        client.BatchV1Api(kube.api),
        client.RbacAuthorizationV1Api(kube.api),
    )
    lists = {
        "Job": batch.list_namespaced_job(ns, label_selector=OWNER_LABEL).items,
        "ConfigMap": core.list_namespaced_config_map(ns, label_selector=OWNER_LABEL).items,
        "ServiceAccount": core.list_namespaced_service_account(ns, label_selector=OWNER_LABEL).items,
        "Role": rbac.list_namespaced_role(ns, label_selector=OWNER_LABEL).items,
        "RoleBinding": rbac.list_namespaced_role_binding(ns, label_selector=OWNER_LABEL).items,
    }
    out: dict[str, collections.Counter[str]] = {}
    for kind, items in lists.items():
        counts: collections.Counter[str] = collections.Counter()
        for obj in items:
            for ref in obj.metadata.owner_references or []:
                if ref.kind == "FineTuneJob" and ref.controller:
                    counts[ref.name] += 1
        out[kind] = counts
    return out


def status_complete(obj: dict[str, Any]) -> bool:
    """The status a reconcile writes for a suspended FineTuneJob: its phase, the generation it saw, the
    attempt and its conditions."""
    status = obj.get("status") or {}
    return (
        status.get("phase") == "Suspended"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
        and status.get("attempts") == 1
        and bool(status.get("conditions"))
    )


def problems(kube, ns: str, names: list[str]) -> list[str]:
    """Every way the namespace differs from "exactly one Job and one of each child per FineTuneJob, with a
    complete status, and nothing else"."""
    objs, kids = finetunejobs(kube, ns), children(kube, ns)
    found = []
    for name in names:
        if name not in objs:
            found.append(f"{name}: missing")
            continue
        for kind in CHILD_KINDS:
            if kids[kind][name] != 1:
                found.append(f"{name}: {kids[kind][name]} {kind}s")
        if not status_complete(objs[name]):
            found.append(f"{name}: status {objs[name].get('status')}")
    for kind in CHILD_KINDS:
        found += [f"{kind} of unknown {n}" for n in kids[kind] if n not in objs]
    return found


def wait_converged(kube, ns: str, names: list[str], timeout: float) -> float:
    """Wait until PROBLEMS is empty; the seconds it took."""
    started = time.monotonic()
    wait_for(lambda: not problems(kube, ns, names), timeout, 1.0,
             f"one Job and a complete status for each of {len(names)} FineTuneJobs")  # fmt: skip
    return time.monotonic() - started


def resource_versions(kube, ns: str) -> dict[str, str]:
    """FineTuneJobs' and Jobs' resourceVersions: unchanged over a quiet period means nobody is writing."""
    rv = {f"ftj/{n}": o["metadata"]["resourceVersion"] for n, o in finetunejobs(kube, ns).items()}
    for job in client.BatchV1Api(kube.api).list_namespaced_job(ns, label_selector=OWNER_LABEL).items:
        rv[f"job/{job.metadata.name}"] = job.metadata.resource_version
    return rv


def _logged(op: Operator) -> list[str]:
    """Every line the operator logged, over all its (re)starts (the test harness's reconcile trace left out)."""
    return op.logged_lines()


# kopf's own line for a watch request that failed and is retried (the API server or etcd away).
KOPF_WATCH_RETRY = re.compile(
    r" ERROR kopf\._cogs\.clients\.watching: Request attempt #\d+/\d+ failed; will retry: GET "
)


def error_lines(op: Operator) -> list[str]:
    """The operator's ERROR and Traceback lines, over all its (re)starts."""
    return [ln for ln in _logged(op) if " ERROR " in ln or "Traceback" in ln]


def outage_lines(op: Operator) -> list[str]:
    """The operator's "the API server is unavailable" warnings (one per 10 s window of an outage)."""
    return [ln for ln in _logged(op) if "the API server is unavailable" in ln]


def log_lines(op: Operator) -> int:
    """How many lines the operator logged, over all its (re)starts."""
    return len(_logged(op))


def check_recovered(
    kube, op: Operator, ns: str, names: list[str], down: float, what: str, timeout: float
) -> None:
    """After an outage of DOWN seconds (WHAT, for the printed figures): every FineTuneJob converges, the
    operator is still running, and its log stays quiet."""
    took = wait_converged(kube, ns, names, timeout)
    assert op.proc.poll() is None, "the operator exited"
    errors, outage = error_lines(op), outage_lines(op)
    print(f"\n{what}: all {len(names)} converged {took:.1f} s later; {len(errors)} ERROR lines, "
          f"{len(outage)} outage warnings, {log_lines(op)} lines in all")  # fmt: skip
    assert problems(kube, ns, names) == []
    # kopf logs its watch retries at ERROR (a few per watch); failed reconciles are one warning per 10 s: any
    # other ERROR line (a reconcile's exception, a crash's traceback) is a failure.
    unexpected = [line for line in errors if not KOPF_WATCH_RETRY.search(line)]
    assert not unexpected, "\n".join(unexpected[:40])
    assert len(errors) <= 30, "\n".join(errors[:40])
    assert len(outage) <= down / 10 + 4, "\n".join(outage)
    assert log_lines(op) <= 300, op.log_tail()


def settled_versions(kube, ns: str, quiet: float = 2.0, timeout: float = 60.0) -> dict[str, str]:
    """RESOURCE_VERSIONS once two looks QUIET seconds apart agree (the Job controller may still be adding
    its Suspended condition to the last Jobs); fails when they keep changing for TIMEOUT (writers fighting)."""
    deadline = time.monotonic() + timeout
    previous = resource_versions(kube, ns)
    while True:
        time.sleep(quiet)
        current = resource_versions(kube, ns)
        if current == previous:
            return current
        if time.monotonic() > deadline:
            changed = sorted(k for k in current if current.get(k) != previous.get(k))
            raise AssertionError(f"objects still changing after {timeout} s: {changed[:20]}")
        previous = current
