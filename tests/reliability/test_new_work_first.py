"""New work never waits behind old work: after a restart the operator reconciles every existing object once
more (kopf's initial listing), and a FineTuneJob it has not seen yet goes before all of them (the work
queue's priorities, kubetune/reconcile/queue.py). Asserted on the order of the restarted operator's
reconciles, never on a time; and the resync itself: once per object, no GET, no write."""

from __future__ import annotations

import collections
import re

import pytest
from kubernetes import client

from tests.reliability import faults
from tests.support.objects import tiny_job
from tests.support.operator import RECONCILE_LOGGER, Operator
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

EXISTING = 400


def reconciles(op: Operator, namespace: str) -> list[str]:
    """The FineTuneJobs of NAMESPACE this operator process reconciled, one entry per reconcile, in order."""
    line = re.compile(rf" {re.escape(RECONCILE_LOGGER)}: FineTuneJob {re.escape(namespace)}/(\S+) reconciled")
    return line.findall(op.log_path.read_text(errors="replace"))


def reconcile_order(op: Operator, namespace: str) -> list[str]:
    """The FineTuneJobs of NAMESPACE in the order of their first reconcile by this operator process."""
    return list(dict.fromkeys(reconciles(op, namespace)))


def suspended_jobs(kube, ns: str) -> int:
    """How many trainer Jobs of NS the Job controller has marked Suspended."""
    jobs = client.BatchV1Api(kube.api).list_namespaced_job(ns, label_selector=faults.OWNER_LABEL).items
    return sum(1 for j in jobs if any(c.type == "Suspended" for c in j.status.conditions or []))


def versions(kube, ns: str) -> dict[str, str]:
    return {name: obj["metadata"]["resourceVersion"] for name, obj in faults.finetunejobs(kube, ns).items()}


def test_a_finetunejob_new_to_the_operator_goes_before_the_resync_of_existing_ones(kube, own_ns, tmp_path):
    names = [f"old-{i:04d}" for i in range(EXISTING)]
    first = faults.operator(kube, tmp_path / "first", own_ns)
    first.start()
    try:
        faults.create_burst(kube, own_ns, names)
        wait_for(
            lambda: not faults.problems(kube, own_ns, names), 600, 1.0, "every existing FineTuneJob done"
        )
        # ... and the Job controller done with their Jobs (it writes each suspended Job's status once, at 20
        # requests a second): a change after the restart would rightly be reconciled once more.
        wait_for(lambda: suspended_jobs(kube, own_ns) == EXISTING, 600, 1.0, "every Job's status Suspended")
    finally:
        first.stop()
    before = versions(kube, own_ns)

    # Applied while no operator runs: the restarted operator's listing brings it, after every existing one
    # (a listing is in name order). One worker, so that the resync of the existing ones takes a while.
    client.CustomObjectsApi(kube.api).create_namespaced_custom_object(
        faults.GROUP, faults.VERSION, own_ns, faults.PLURAL, tiny_job("zzz-new", suspend=True)
    )
    second = faults.operator(kube, tmp_path / "second", own_ns, KUBETUNE_WORKERS="1")
    second.start()
    try:
        batch = client.BatchV1Api(kube.api)
        wait_for(lambda: batch.read_namespaced_job("zzz-new-trainer", own_ns), 300, 0.2, "zzz-new's Job")

        def resynced() -> list[str] | None:
            order = reconcile_order(second, own_ns)
            return order if set(names) <= set(order) else None

        order = wait_for(resynced, 600, 0.5, "the restarted operator's resync of every existing FineTuneJob")
        gets = second.metric("kubetune_api_reads_total", verb="get")
        each = collections.Counter(reconciles(second, own_ns))
    finally:
        second.stop()

    ahead = order.index("zzz-new")
    print(f"\n{ahead} of {EXISTING} existing FineTuneJobs were reconciled before the new one")
    # First in, first out, it would come after all of them (each was listed, and queued, before it); with
    # priorities only those a worker took while kopf was still listing (before its event came) go first: the
    # rest of the existing ones come after it (here 86-209 of 400 went first, on a loaded machine).
    assert ahead < EXISTING, f"all {EXISTING} existing FineTuneJobs were reconciled before the new one"
    # The restart reconciled each existing FineTuneJob once (not once more for its Job's listing) and read
    # nothing one by one: the watch index and the remembered children were filled by one list of each kind.
    again = sorted(name for name in names if each[name] != 1)
    assert not again, f"{len(again)} existing FineTuneJobs reconciled more than once: {again[:5]}"
    assert gets == 0, f"the restarted operator made {gets:.0f} GETs"
    after = versions(kube, own_ns)
    changed = sorted(name for name in names if after[name] != before[name])
    assert not changed, f"the resync wrote to {len(changed)} unchanged FineTuneJobs: {changed[:5]}"
    assert not faults.problems(kube, own_ns, [*names, "zzz-new"])
