"""The Argo CD health checks (charts/kubetune/argocd/kubetune.io/*/health.lua) in a real Lua 5.1 runtime
(lupa; Argo CD runs gopher-lua, a Lua 5.1) on FineTuneJobs and ModelServes as the API server serves them,
and on the testdata of Argo CD's own resource_customizations test layout (health_test.yaml)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from . import states

ARGOCD = Path(__file__).resolve().parents[2] / "charts" / "kubetune" / "argocd" / "kubetune.io"
UPDATE = os.environ.get("KUBETUNE_UPDATE_ARGOCD_TESTDATA") == "1"


def health(kind: str, obj: dict) -> dict:
    """Run KIND's health.lua the way Argo CD does: the object as the global `obj`, the script's return value."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    # Argo CD gives the script only these standard libraries (plus its own helpers, unused here).
    lua.execute("io = nil; os = nil; debug = nil; require = nil; dofile = nil; loadfile = nil")
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute((ARGOCD / kind / "health.lua").read_text())
    assert hs is not None, f"{kind}/health.lua returned nothing"
    result = {"status": hs["status"], "message": hs["message"]}
    assert result["status"] in ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
    assert isinstance(result["message"], str) and result["message"]
    return result


EXPECTED = {
    "ftj-pending": ("Progressing", "Creating the trainer Job"),
    "ftj-running": ("Progressing", "Running: step 40/100 (40.0%)"),
    "ftj-succeeded": ("Healthy", "Succeeded: result at pvc://models/x"),
    "ftj-failed": ("Degraded", "The trainer failed 4 times (backoffLimit 3): CUDA out of memory"),
    "ftj-waiting-for-pvc": ("Progressing", states.MISSING_PVC),
    "ftj-stalled-on-pvc": ("Degraded", states.PVC_GAVE_UP),
    "ftj-suspended": ("Suspended", "spec.suspend is true; resuming continues from step 40"),
    "ftj-stale": ("Progressing", "Waiting for the kubetune operator to observe generation 2"),
    "ftj-deleting": ("Progressing", "FineTuneJob is being deleted"),
    "ms-rolling-out": ("Progressing", "Rolling out revision abc123: 0/1 pods ready"),
    "ms-ready": ("Healthy", "Serving at http://x.ns.svc:80 (1/1 replicas ready)"),
    "ms-failed-no-previous": ("Degraded", states.NO_PREVIOUS),
    "ms-rolled-back": ("Degraded", states.ROLLED_BACK),
    "ms-unsupported": ("Degraded", states.UNSUPPORTED),
    "ms-stale": ("Progressing", "Waiting for the kubetune operator to observe generation 2"),
    "ms-deleting": ("Progressing", "ModelServe is being deleted"),
}


def kind_of(state: str) -> str:
    return "FineTuneJob" if state.startswith("ftj-") else "ModelServe"


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_health_of_each_state(world, state):
    status, message = EXPECTED[state]
    assert health(kind_of(state), world[state]) == {"status": status, "message": message}


def test_fresh_objects_without_status_are_progressing(kube, namespace):
    from tests.operator.conftest import apply_crds

    apply_crds(kube.api)
    for kind in ("FineTuneJob", "ModelServe"):
        obj = states.create(kube.api, namespace, kind, "fresh", None)
        assert "status" not in obj
        assert health(kind, obj) == {
            "status": "Progressing",
            "message": f"Waiting for the kubetune operator to pick up the {kind}",
        }


def test_spec_suspend_wins_before_the_operator_writes_suspended():
    obj = {"metadata": {"generation": 1}, "spec": {"suspend": True}, "status": states.ftj_running(1)}
    obj["status"]["conditions"] = [c for c in obj["status"]["conditions"] if c["type"] != "Reconciling"]
    assert health("FineTuneJob", obj)["status"] == "Suspended"


# ------------------------------------------------------------------- Argo CD's resource_customizations layout


def as_testdata(obj: dict) -> dict:
    """The object as a committed Argo CD testdata file: no server-specific fields."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
        meta.pop(key, None)
    meta["namespace"] = "default"
    if "deletionTimestamp" in meta:
        meta["deletionTimestamp"] = states.T1
    return obj


def test_argocd_testdata_are_the_live_objects(world):
    """charts/kubetune/argocd/kubetune.io/*/testdata are these objects as the API server serves them; regenerate
    with KUBETUNE_UPDATE_ARGOCD_TESTDATA=1."""
    stale = []
    for state in sorted(EXPECTED):
        kind = kind_of(state)
        path = ARGOCD / kind / "testdata" / f"{state}.yaml"
        want = as_testdata(world[state])
        if UPDATE:
            path.parent.mkdir(exist_ok=True)
            path.write_text(yaml.safe_dump(want, sort_keys=False))
        elif not path.exists() or yaml.safe_load(path.read_text()) != want:
            stale.append(str(path))
    if UPDATE:
        for kind in ("FineTuneJob", "ModelServe"):
            tests = [
                {"healthStatus": {"status": EXPECTED[s][0], "message": EXPECTED[s][1]},
                 "inputPath": f"testdata/{s}.yaml"}
                for s in sorted(EXPECTED) if kind_of(s) == kind
            ]  # fmt: skip
            (ARGOCD / kind / "health_test.yaml").write_text(yaml.safe_dump({"tests": tests}, sort_keys=False))
    assert not stale, f"stale Argo CD testdata (run with KUBETUNE_UPDATE_ARGOCD_TESTDATA=1): {stale}"


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelServe"])
def test_argocd_health_test_yaml(kind):
    """Every case of health_test.yaml, as Argo CD's own TestLuaHealthScript runs them."""
    cases = yaml.safe_load((ARGOCD / kind / "health_test.yaml").read_text())["tests"]
    assert len(cases) >= 7
    for case in cases:
        obj = yaml.safe_load((ARGOCD / kind / case["inputPath"]).read_text())
        assert health(kind, obj) == case["healthStatus"], case["inputPath"]
