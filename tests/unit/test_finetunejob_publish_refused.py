"""A run that trained but whose result the registry refused (status.result.publishError, written by the
trainer before its pod exits 0): the FineTuneJob is Failed with the trainer's reason and message (what to
change, where the result is kept), one Warning Event, no new attempt; another run's error does not count."""

from __future__ import annotations

from kubetune.reconcile.clock import fmt_time
from tests.unit.test_finetunejob_decision import (
    at,
    cond,
    created_job,
    decide_all,
    events,
    ftj,
    job_cond,
    kstatus,
    started,
    with_status,
)

MESSAGE = (
    "output.uri: push refused with 401 Unauthorized: the registry registry.example.com refused the credentials; "
    "fix the kubernetes.io/dockerconfigjson Secret named in output.secretRef; the trained result is kept at "
    "pvc://models/capitals"
)


def with_result(obj: dict, **result) -> dict:
    obj = {**obj, "status": {**(obj.get("status") or {}), "result": result}}
    return obj


def test_a_refused_push_fails_the_run_with_the_trainers_words():
    obj, job, first = started(ftj())
    rid = job["metadata"]["labels"]["kubetune.io/run-id"]
    done = created_job(first, completionTime=fmt_time(at(100)), conditions=[job_cond("Complete")])
    reported = with_result(obj, uri="pvc://models/capitals", configHash=rid,
                           publishError={"reason": "PushRefused", "message": MESSAGE})  # fmt: skip
    d = decide_all(reported, at(101), jobs=[done])
    assert d.status["phase"] == "Failed"
    failed = cond(d, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "PushRefused" and failed["message"] == MESSAGE
    assert (
        cond(d, "Succeeded")["status"] == "False"
        and "trained in attempt 1" in cond(d, "Succeeded")["message"]
    )
    assert ("Warning", "PushRefused") in events(d) and ("Normal", "Completed") not in events(d)
    assert all(o["kind"] != "Job" for o in d.apply)  # no new attempt: it would only train again
    assert kstatus(with_status(reported, d)) == "Failed"
    # once: the next reconcile says nothing new
    later = decide_all(with_status(reported, d), at(200), jobs=[done])
    assert later.status["phase"] == "Failed" and not later.events


def test_an_error_of_another_run_does_not_count():
    obj, _, first = started(ftj())
    done = created_job(first, completionTime=fmt_time(at(100)), conditions=[job_cond("Complete")])
    stale = with_result(obj, uri="pvc://models/old", configHash="an-older-run",
                        publishError={"reason": "TagExists", "message": "old"})  # fmt: skip
    d = decide_all(stale, at(101), jobs=[done])
    assert d.status["phase"] == "Succeeded"
