"""The Argo CD health checks (charts/kubetune/argocd/kubetune.io/*/health.lua) in Argo CD's own Lua runtime,
gopher-lua, called the way Argo CD's controller calls a check configured in argocd-cm (hack/argocd-lua: no
string or math library), on FineTuneJobs and ModelServes as the API server serves them, and on the testdata of
Argo CD's resource_customizations test layout (health_test.yaml). tests/operator/test_kstatus_cluster.py runs
them on statuses the operator wrote itself."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.gitops import argocd_health

from . import states

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "charts" / "kubetune" / "argocd"
UPDATE = os.environ.get("KUBETUNE_UPDATE_ARGOCD_TESTDATA") == "1"
CODES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


def health(kind: str, obj: dict) -> dict:
    """Argo CD's verdict on OBJ: KIND's health.lua in gopher-lua (a script error fails the test)."""
    (verdict,) = argocd_health(kind, obj)
    assert "error" not in verdict, f"{kind}/health.lua failed in Argo CD's runtime: {verdict['error']}"
    assert verdict["status"] in CODES and verdict.get("message"), verdict
    return verdict


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
    from tests.support.crds import apply_crds

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
        path = ARGOCD / "kubetune.io" / kind / "testdata" / f"{state}.yaml"
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
            (ARGOCD / "kubetune.io" / kind / "health_test.yaml").write_text(
                yaml.safe_dump({"tests": tests}, sort_keys=False)
            )
    assert not stale, f"stale Argo CD testdata (run with KUBETUNE_UPDATE_ARGOCD_TESTDATA=1): {stale}"


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelServe"])
def test_argocd_health_test_yaml(kind):
    """Every case of health_test.yaml, as Argo CD's own TestLuaHealthScript runs them."""
    cases = yaml.safe_load((ARGOCD / "kubetune.io" / kind / "health_test.yaml").read_text())["tests"]
    assert len(cases) >= 7
    for case in cases:
        obj = yaml.safe_load((ARGOCD / "kubetune.io" / kind / case["inputPath"]).read_text())
        assert health(kind, obj) == case["healthStatus"], case["inputPath"]


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_the_same_verdict_with_every_library_open(world, state):
    """A check marked useOpenLibs (or built into Argo CD) gets every standard library: the same verdict."""
    kind = kind_of(state)
    assert argocd_health(kind, world[state], open_libs=True) == argocd_health(kind, world[state])


def test_the_runtime_is_argocd_s_strict_one(tmp_path):
    """The harness refuses what Argo CD refuses in a check from argocd-cm: the string library (a check that
    formats with string.format fails there), a non-table result; an unknown status becomes Unknown."""
    from tests.support.gitops import gotool

    def run(script: str, *flags: str) -> str:
        path = tmp_path / "check.lua"
        path.write_text(script)
        proc = subprocess.run([gotool("argocd-lua"), *flags, str(path)], input='{"status": {"phase": "x"}}\n',
                              capture_output=True, text=True, check=True)  # fmt: skip
        return proc.stdout

    formatted = 'return {status = "Healthy", message = string.format("%d", 1)}'
    assert "attempt to index a non-table object(nil) with key 'format'" in run(formatted)
    assert '"message":"1"' in run(formatted, "-open-libs")
    assert "expect table output from Lua script, not string" in run('return "Healthy"')
    assert run('return {status = "Fine"}').strip() == (
        '{"status":"Unknown","message":"Lua returned an invalid health status"}'
    )
    assert (
        run("return {status = obj.status.phase}")
        == '{"status":"Unknown","message":"Lua returned an invalid health status"}\n'
    )


def test_both_checks_are_assembled_from_one_library():
    """health.lua of each kind is src/common.lua plus src/<Kind>.lua (hack/argocd_health.py), as committed."""
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "argocd_health.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    common = (ARGOCD / "src" / "common.lua").read_text()
    for kind in ("FineTuneJob", "ModelServe"):
        assert common in (ARGOCD / "kubetune.io" / kind / "health.lua").read_text()
