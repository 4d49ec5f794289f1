"""One controller shape (#28) on a real control plane: a reconcile reads what the watches delivered (no GET in
steady state), and a status decided from a stale read is refused by the API server and read again."""

from __future__ import annotations

import copy
import time

import pytest

from kubetune.reconcile.client import Kube, api_client
from kubetune.reconcile.credentials import load_configuration
from kubetune.reconcile.writes import Conflict, Writer
from tests.support.objects import FTJ, tiny_job
from tests.support.operator import Operator

pytestmark = pytest.mark.cluster


@pytest.mark.kwok
def test_a_steady_state_reconcile_reads_nothing_and_writes_nothing(kube, crds, tmp_path):
    # An operator of its own (the shared one reconciles other tests' objects, which may read), watching one
    # namespace.
    ns = kube.new_namespace("reads")
    op = Operator(kube.kubeconfig, tmp_path, namespaces=ns)
    op.start()
    try:
        f = FTJ(kube, ns)
        f.create(tiny_job("steady-reads", suspend=True))
        f.wait_phase("steady-reads", "Suspended", 30)
        time.sleep(1)  # the reconciles its own writes queued (none) and the watch events settle
        reads = op.metric("kubetune_api_reads_total")
        writes = op.metric("kubetune_api_writes_total")
        # An event the reconcile must look at (an annotation: no spec change), as a trainer's report or a
        # resync would queue one.
        before = op.reconciles("FineTuneJob", ns, "steady-reads")
        f.patch("steady-reads", {"metadata": {"annotations": {"poke": "1"}}})
        op.wait_reconciled("FineTuneJob", ns, "steady-reads", after=before)
        assert op.metric("kubetune_api_reads_total") == reads, "a steady-state reconcile sent a GET or LIST"
        assert op.metric("kubetune_api_writes_total") == writes
    finally:
        op.stop()
        kube.delete_namespace(ns)


def test_a_status_decided_from_a_stale_read_is_refused_and_read_again(kube, crds):
    """The write path's optimistic concurrency against the real API server: the status patch carries the
    resourceVersion it was decided from."""
    ns = kube.new_namespace("stale")  # not watched by any operator
    try:
        f = FTJ(kube, ns)
        f.create(tiny_job("stale"))
        writer = Writer(Kube(api_client(load_configuration(kube.kubeconfig))))
        read = f.get("stale")
        stale = copy.deepcopy(read)
        # Someone else (the trainer, another writer) changes the object after our read.
        f.co.patch_namespaced_custom_object_status(
            "kubetune.io", "v1alpha1", ns, "finetunejobs", "stale", {"status": {"attempts": 7}}
        )
        with pytest.raises(Conflict):
            writer.status(
                stale, {"phase": "Pending", "observedGeneration": 1}, ("phase", "observedGeneration")
            )
        assert f.status("stale").get("phase") is None  # nothing was written
        fresh = writer.refresh("FineTuneJob", ns, "stale")
        assert fresh is not None and writer.index.get("FineTuneJob", ns, "stale")["status"]["attempts"] == 7
        writer.status(fresh, {"phase": "Pending", "observedGeneration": 1}, ("phase", "observedGeneration"))
        status = f.status("stale")
        assert status["phase"] == "Pending" and status["attempts"] == 7  # the other writer's field kept
        # The index holds what was written, so the next reconcile starts from it (no GET).
        assert (
            writer.index.get("FineTuneJob", ns, "stale")["metadata"]["resourceVersion"]
            == (f.get("stale")["metadata"]["resourceVersion"])
        )
    finally:
        kube.delete_namespace(ns)


@pytest.mark.kwok
def test_the_resync_reads_the_children_of_work_in_progress_only(kube, crds, tmp_path):
    """Drift repair reads a FineTuneJob's unwatched children again once what the operator remembers of them is
    older than the resync period, except for a FineTuneJob that finished with its current spec (at 10,000
    FineTuneJobs, most of them finished, it was a burst of thousands of GETs every period)."""
    ns = kube.new_namespace("settled")
    op = Operator(kube.kubeconfig, tmp_path, namespaces=ns, KUBETUNE_RESYNC_SECONDS="2")
    op.start()

    def three_resyncs(name: str) -> None:
        seen = op.reconciles("FineTuneJob", ns, name)
        for _ in range(3):  # the third one finds entries at least a period old whatever its phase
            seen = op.wait_reconciled("FineTuneJob", ns, name, after=seen, timeout=30)

    try:
        f = FTJ(kube, ns)
        f.create(tiny_job("finished"))
        f.wait_phase("finished", "Succeeded", 120)
        gets = op.metric("kubetune_api_reads_total", verb="get")
        three_resyncs("finished")
        assert op.metric("kubetune_api_reads_total", verb="get") == gets, (
            "a finished job's children were read"
        )

        f.create(tiny_job("waiting", suspend=True))
        f.wait_phase("waiting", "Suspended", 60)
        gets = op.metric("kubetune_api_reads_total", verb="get")
        three_resyncs("waiting")
        assert op.metric("kubetune_api_reads_total", verb="get") > gets, (
            "work in progress got no drift repair"
        )
    finally:
        op.stop()
        kube.delete_namespace(ns)
