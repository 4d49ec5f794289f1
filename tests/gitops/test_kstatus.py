"""What kstatus (sigs.k8s.io/cli-utils, the health assessment of Flux and of kubectl-style tools) says about
FineTuneJobs and ModelServes as the API server serves them: hack/kstatus runs the real library."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gitops import kstatus

from . import states

REPO = Path(__file__).resolve().parents[2]


# state -> (kstatus status, words its message must contain)
EXPECTED = {
    "ftj-pending": ("InProgress", "Creating the trainer Job"),
    "ftj-running": ("InProgress", "step 40/100"),
    "ftj-succeeded": ("Current", "Resource is Ready"),
    "ftj-failed": ("Failed", "backoffLimit 3"),
    "ftj-waiting-for-pvc": ("InProgress", "PersistentVolumeClaim models not found"),
    "ftj-stalled-on-pvc": ("Failed", "PersistentVolumeClaim models not found in this namespace for 2m"),
    # kstatus reads Ready=False on any resource as "not yet": a suspended run is not done, and Flux keeps
    # waiting for it (until its health-check timeout) rather than calling it ready.
    "ftj-suspended": ("InProgress", "spec.suspend is true"),
    "ms-rolling-out": ("InProgress", "Rolling out revision abc123"),
    "ms-ready": ("Current", "Resource is Ready"),
    # Rolled back: the previous revision still serves (Ready=True), but what was asked for does not
    # (Stalled=True): kstatus says Failed, so a Flux health check does not pass a failed rollout.
    "ms-rolled-back": ("Failed", states.ROLLED_BACK),
    "ms-failed-no-previous": ("Failed", "no previous revision"),
    "ms-unsupported": ("Failed", "tgi cannot serve a prefix-tuning result"),
    "ftj-stale": ("InProgress", "generation is 2, but latest observed generation is 1"),
    "ms-stale": ("InProgress", "generation is 2, but latest observed generation is 1"),
    "ftj-deleting": ("Terminating", ""),
    "ms-deleting": ("Terminating", ""),
}


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_kstatus_of_each_state(world, state):
    want, words = EXPECTED[state]
    (result,) = kstatus(world[state])
    assert (result["name"], result["status"]) == (state, want), result
    assert words in result["message"]


def test_a_missing_pvc_is_never_current(world):
    """Flux waits while the operator waits for the PVC, and fails the Kustomization once it gave up."""
    waiting, gave_up = kstatus(world["ftj-waiting-for-pvc"], world["ftj-stalled-on-pvc"])
    assert waiting["status"] != "Current" and waiting["message"] == states.MISSING_PVC
    assert gave_up["status"] == "Failed" and gave_up["message"] == states.PVC_GAVE_UP


def test_whole_list_from_the_api_server(kube, world):
    """`kubectl get ftj,mserve -o json` output (a v1 List) as Flux would see the namespace."""
    ns = world["ftj-running"]["metadata"]["namespace"]
    items = [o for o in world.values() if o["metadata"]["namespace"] == ns]
    results = kstatus({"apiVersion": "v1", "kind": "List", "items": items})
    assert {r["name"]: r["status"] for r in results} == {k: v[0] for k, v in EXPECTED.items()}
