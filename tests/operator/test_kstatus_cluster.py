"""kstatus (the real library, hack/kstatus) on FineTuneJobs and ModelServes whose status `kubetune operator`
wrote itself: running, done and stuck objects must read InProgress, Current and Failed.

tests/gitops/test_kstatus.py covers every state with statuses shaped like the operator's; this file closes the
loop with the operator in charge (kwok fakes the trainer pods)."""

from __future__ import annotations

import copy

import pytest
from kubernetes import client

from tests.gitops.test_kstatus import kstatus, kstatus_bin  # noqa: F401 - the fixture is used by name
from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]


def _status_of(binary: str, obj: dict) -> tuple[str, str]:
    (result,) = kstatus(binary, obj)
    return result["status"], result.get("message", "")


def test_finetunejobs_running_done_and_failed(ftj: FTJ, kstatus_bin):  # noqa: F811 - fixtures
    ftj.create(tiny_job("ks-running", labels={"kwok.kubetune.io/outcome": "run"}))
    ftj.create(tiny_job("ks-done"))
    ftj.create(tiny_job("ks-failed", labels={"kwok.kubetune.io/outcome": "fail"}, backoffLimit=0))
    ftj.wait_phase("ks-running", "Running", 60)
    ftj.wait_phase("ks-done", "Succeeded", 60)
    ftj.wait_phase("ks-failed", "Failed", 60)
    assert _status_of(kstatus_bin, ftj.get("ks-running"))[0] == "InProgress"
    assert _status_of(kstatus_bin, ftj.get("ks-done"))[0] == "Current"
    status, message = _status_of(kstatus_bin, ftj.get("ks-failed"))
    assert status == "Failed" and "exited with code 1" in message, message


def test_modelserves_waiting_and_unsupported(kube, ftj: FTJ, kstatus_bin):  # noqa: F811 - fixtures
    co = client.CustomObjectsApi(kube.api)

    def serve(name: str, job: str) -> dict:
        body = {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "ModelServe",
            "metadata": {"name": name, "namespace": ftj.ns},
            "spec": {"model": {"fineTuneJobRef": {"name": job}}},
        }
        co.create_namespaced_custom_object(
            "kubetune.io", "v1alpha1", ftj.ns, "modelserves", copy.deepcopy(body)
        )

        def written() -> dict | None:
            obj = co.get_namespaced_custom_object("kubetune.io", "v1alpha1", ftj.ns, "modelserves", name)
            return obj if (obj.get("status") or {}).get("observedGeneration") else None

        return wait_for(written, 90, 0.3, f"{name}: a status from the operator")

    # A job that is still training: the ModelServe waits for its result.
    ftj.create(tiny_job("ks-training", labels={"kwok.kubetune.io/outcome": "run"}))
    assert _status_of(kstatus_bin, serve("ks-waits", "ks-training"))[0] == "InProgress"
    # A classifier: no text-generation engine serves it, and nothing changes that but an edit.
    classifier = tiny_job("ks-classifier")
    classifier["spec"]["model"] = {
        "uri": "hf://bert-base-uncased",
        "task": "sequence-classification",
        "numLabels": 2,
    }
    classifier["spec"]["dataset"] = {"uri": "hf://imdb", "format": "classification"}
    ftj.create(classifier)
    status, message = _status_of(kstatus_bin, serve("ks-unsupported", "ks-classifier"))
    assert status == "Failed" and "sequence-classification" in message, message
