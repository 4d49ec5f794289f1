"""kstatus (the real library, hack/kstatus) and Argo CD's health checks (in gopher-lua, hack/argocd-lua) on
FineTuneJobs and ModelServes whose status `kubetune operator` wrote itself: running, done and stuck objects
must read InProgress / Progressing, Current / Healthy and Failed / Degraded.

tests/gitops covers every state with statuses shaped like the operator's; this file closes the loop with the
operator in charge (kwok fakes the trainer pods)."""

from __future__ import annotations

import copy

import pytest
from kubernetes import client

from tests.support.gitops import argocd_health, kstatus
from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]


def _status_of(obj: dict) -> tuple[str, str]:
    (result,) = kstatus(obj)
    return result["status"], result.get("message", "")


def _argocd(obj: dict) -> tuple[str, str]:
    (verdict,) = argocd_health(obj["kind"], obj)
    assert "error" not in verdict, verdict
    return verdict["status"], verdict["message"]


def test_finetunejobs_running_done_and_failed(ftj: FTJ):
    ftj.create(tiny_job("ks-running", labels={"kwok.kubetune.io/outcome": "run"}))
    ftj.create(tiny_job("ks-done"))
    ftj.create(tiny_job("ks-failed", labels={"kwok.kubetune.io/outcome": "fail"}, backoffLimit=0))
    ftj.wait_phase("ks-running", "Running", 60)
    ftj.wait_phase("ks-done", "Succeeded", 60)
    ftj.wait_phase("ks-failed", "Failed", 60)
    running, done, failed = (ftj.get(n) for n in ("ks-running", "ks-done", "ks-failed"))
    assert _status_of(running)[0] == "InProgress"
    assert _status_of(done)[0] == "Current"
    status, message = _status_of(failed)
    assert status == "Failed" and "exited with code 1" in message, message
    # Argo CD, on the same objects.
    assert _argocd(running)[0] == "Progressing"
    assert _argocd(done)[0] == "Healthy"  # kwok's pod wrote no result: the Ready condition's message
    status, message = _argocd(failed)
    assert status == "Degraded" and "exited with code 1" in message, message


def test_modelserves_waiting_and_unsupported(kube, ftj: FTJ):
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
    waits = serve("ks-waits", "ks-training")
    assert _status_of(waits)[0] == "InProgress"
    assert _argocd(waits)[0] == "Progressing"
    # A classifier: no text-generation engine serves it, and nothing changes that but an edit.
    classifier = tiny_job("ks-classifier")
    classifier["spec"]["model"] = {
        "uri": "hf://bert-base-uncased",
        "task": "sequence-classification",
        "numLabels": 2,
    }
    classifier["spec"]["dataset"] = {"uri": "hf://imdb", "format": "classification"}
    ftj.create(classifier)
    unsupported = serve("ks-unsupported", "ks-classifier")
    status, message = _status_of(unsupported)
    assert status == "Failed" and "sequence-classification" in message, message
    status, message = _argocd(unsupported)
    assert status == "Degraded" and "sequence-classification" in message, message
