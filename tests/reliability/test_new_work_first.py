"""New work never waits behind old work: after a restart the operator reconciles every existing object once
more (kopf's initial listing), and a FineTuneJob it has not seen yet goes before all of them (the work
queue's priorities, kubetune/reconcile/queue.py). Asserted on the order of the restarted operator's
reconciles, never on a time."""

from __future__ import annotations

import re

import pytest
from kubernetes import client

from tests.reliability import faults
from tests.support.objects import tiny_job
from tests.support.operator import RECONCILE_LOGGER, Operator
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

EXISTING = 400


def reconcile_order(op: Operator, namespace: str) -> list[str]:
    """The FineTuneJobs of NAMESPACE in the order of their first reconcile by this operator process."""
    line = re.compile(rf" {re.escape(RECONCILE_LOGGER)}: FineTuneJob {re.escape(namespace)}/(\S+) reconciled")
    order: list[str] = []
    for match in line.finditer(op.log_path.read_text(errors="replace")):
        if match.group(1) not in order:
            order.append(match.group(1))
    return order


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
    finally:
        second.stop()

    ahead = order.index("zzz-new")
    print(f"\n{ahead} of {EXISTING} existing FineTuneJobs were reconciled before the new one")
    # First in, first out, it would come after all of them; only those taken while kopf was still listing
    # (before its event arrived) may go first.
    assert ahead < EXISTING // 2, f"{ahead} of {EXISTING} existing FineTuneJobs were reconciled before it"
    after = versions(kube, own_ns)
    changed = sorted(name for name in names if after[name] != before[name])
    assert not changed, f"the resync wrote to {len(changed)} unchanged FineTuneJobs: {changed[:5]}"
    assert not faults.problems(kube, own_ns, [*names, "zzz-new"])
