"""Ready / Reconciling / Stalled on real FineTuneJobs (the conditions kstatus, Flux and Argo CD read),
with `kubetune operator` running against the local control plane and kwok faking the pods."""

from __future__ import annotations

import datetime as dt

import pytest

from kubetune.reconcile.finetunejob_draft import STALL_GRACE_SECONDS
from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def _kstatus(f: FTJ, name: str) -> dict[str, tuple[str, str]]:
    st = f.status(name)
    return {
        c["type"]: (c["status"], c["reason"])
        for c in st.get("conditions") or []
        if c["type"] in ("Ready", "Reconciling", "Stalled")
    }


@pytest.mark.kwok
def test_running_reconciles_and_a_failed_run_stalls(ftj: FTJ):
    ftj.create(tiny_job("steady", labels={"kwok.kubetune.io/outcome": "run"}))
    ftj.wait_phase("steady", "Running", 30)
    assert _kstatus(ftj, "steady") == {
        "Ready": ("False", "Running"),
        "Reconciling": ("True", "Running"),
        "Stalled": ("False", "Running"),
    }
    ftj.create(tiny_job("broken", labels={"kwok.kubetune.io/outcome": "fail"}, backoffLimit=0))
    st = ftj.wait_phase("broken", "Failed", 60)
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "BackoffLimitExceeded"
    assert "exited with code 1" in stalled["message"] and stalled["observedGeneration"] == 1
    assert _kstatus(ftj, "broken")["Reconciling"][0] == "False"
    assert st["observedGeneration"] == 1


def test_missing_pvc_reconciles_then_stalls_after_the_grace(ftj: FTJ):
    ftj.create(tiny_job("nopvc", output={"uri": "pvc://not-there/out"}))
    wait_for(lambda: ftj.cond("nopvc", "Running").get("reason") == "PVCNotFound", 20, 0.2, "PVCNotFound")
    assert _kstatus(ftj, "nopvc")["Reconciling"] == ("True", "PVCNotFound")
    assert _kstatus(ftj, "nopvc")["Stalled"][0] == "False"
    stalled = wait_for(
        lambda: (c := ftj.cond("nopvc", "Stalled")).get("status") == "True" and c,
        STALL_GRACE_SECONDS + 20,
        0.5,
        "Stalled=True after the grace",
    )
    assert (
        stalled["reason"] == "PVCNotFound"
        and "PersistentVolumeClaim 'not-there' not found" in stalled["message"]
    )
    running_since = dt.datetime.fromisoformat(ftj.cond("nopvc", "Running")["lastTransitionTime"])
    stalled_at = dt.datetime.fromisoformat(stalled["lastTransitionTime"])
    assert (stalled_at - running_since).total_seconds() >= STALL_GRACE_SECONDS - 1
    assert _kstatus(ftj, "nopvc")["Reconciling"][0] == "False" and ftj.status("nopvc")["phase"] == "Pending"
    assert not ftj.jobs("nopvc")
    reasons = [e.reason for e in ftj.events("nopvc")]
    assert reasons.count("PVCNotFound") == 1 and reasons.count("Stalled") == 1, reasons
