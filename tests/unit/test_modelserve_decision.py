"""The ModelServe decision, transition by transition, without a cluster (milliseconds each).

Each test drives ``decide`` the way the shell does: the ModelServe's status is what the previous
decision wrote, the Deployment is what it applied with the status the Deployment controller would give
it, and a smoke test the decision asks for is answered with a real SmokeTestResult.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from kubetune.engines.smoke import SmokeTestResult, TargetResult
from kubetune.reconcile.live_adapters import ChangeOutcome, PodState
from kubetune.reconcile.modelserve_decision import (
    Decision,
    Observed,
    ServeOptions,
    SmokeOutcome,
    decide,
    refused,
)
from kubetune.reconcile.refusals import server_message
from kubetune.render import modelserve as r

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
OPTS = ServeOptions(tgi_image="tgi:3", trainer_image="trainer:1", requeue_seconds=5)


def modelserve(spec: dict[str, Any] | None = None, name: str = "bot", generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelServe",
        "metadata": {"name": name, "namespace": "team", "uid": "ms-uid", "generation": generation},
        "spec": spec
        or {
            "model": {"fineTuneJobRef": {"name": "sft"}},
            "replicas": 2,
            "rollout": {"smokeTest": {"prompt": "hello", "expect": "kubetune"}},
        },
    }


def job(config_hash: str | None, *, method: str = "full", task: str = "causal-lm") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running"}
    if config_hash:
        kind = {"full": "full", "prefix-tuning": "prefix"}.get(method, "adapter")
        status = {
            "phase": "Succeeded",
            "result": {"uri": f"pvc://models/sft/{config_hash}", "kind": kind, "configHash": config_hash},
            "completionTime": "2026-01-01T11:59:00Z",
        }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "sft", "namespace": "team", "uid": "job-uid-0123"},
        "spec": {
            "model": {"uri": "hf://org/tiny", "task": task, **({"numLabels": 2} if "class" in task else {})},
            "dataset": {"uri": "hf://org/data"},
            "method": {"type": method},
            "output": {"uri": "pvc://models/sft"},
        },
        "status": status,
    }


def smoke(rev: str, ok: bool = True, output: str = "kubetune world") -> SmokeOutcome:
    error = None if ok else f"output {output!r} does not match expect 'kubetune'"
    result = SmokeTestResult("http://bot.team.svc:80", [TargetResult("base model", ok, output, error)])
    return SmokeOutcome(rev, result=result)


def settled(written: dict[str, Any], replicas: int = 2, generation: int = 1, **status: Any) -> dict[str, Any]:
    """A Deployment as the API server and the Deployment controller leave it after WRITTEN was applied."""
    dep = copy.deepcopy(written)
    dep["metadata"].update(uid="dep-uid", generation=generation)
    dep["status"] = {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
        "readyReplicas": replicas,
        **status,
    }
    return dep


def written(decision: Decision, kind: str) -> dict[str, Any] | None:
    return next((w for w in decision.writes if w["kind"] == kind), None)


def cond(decision: Decision, type_: str) -> dict[str, Any]:
    return next(c for c in decision.status["conditions"] if c["type"] == type_)


def kstatus(decision: Decision) -> str:
    """What kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, checkGenericProperties) computes for a
    custom resource: InProgress on Reconciling=True, Failed on Stalled=True, else Current."""
    for c in decision.status["conditions"]:
        if c["type"] == "Reconciling" and c["status"] == "True":
            return "InProgress"
        if c["type"] == "Stalled" and c["status"] == "True":
            return "Failed"
    return "Current"


def with_status(obj: dict[str, Any], decision: Decision) -> dict[str, Any]:
    return {**obj, "status": decision.status}


class World:
    """The cluster as the decisions leave it: the ModelServe's status, its children, the job."""

    def __init__(self, obj: dict[str, Any], job_: dict[str, Any] | None) -> None:
        self.obj, self.job = obj, job_
        self.dep: dict[str, Any] | None = None
        self.svc: dict[str, Any] | None = None
        self.pdb: dict[str, Any] | None = None
        self.now = T0

    def decide(self, smoke_outcome: SmokeOutcome | None = None) -> Decision:
        observed = Observed(self.obj, self.dep, self.svc, self.pdb, {"sft": self.job}, smoke_outcome)
        d = decide(observed, OPTS, self.now)
        self.obj = with_status(self.obj, d)
        for w in d.writes:
            if w["kind"] == "Deployment":
                # Applying a new template: the controller has not observed it yet.
                gen = (self.dep or {}).get("metadata", {}).get("generation", 0) + 1
                self.dep = settled(w, generation=gen)
                self.dep["status"]["observedGeneration"] = gen - 1
            elif w["kind"] == "Service":
                self.svc = w
            elif w["kind"] == "PodDisruptionBudget":
                self.pdb = w
        self.now += dt.timedelta(seconds=10)
        return d

    def available(self) -> None:
        assert self.dep is not None
        self.dep["status"]["observedGeneration"] = self.dep["metadata"]["generation"]


def test_waiting_for_a_result_is_reconciling_and_deploys_nothing():
    w = World(modelserve(), job(None))
    d = w.decide()
    assert written(d, "Deployment") is None and written(d, "Service") is not None
    assert d.status["phase"] == "Pending"
    assert cond(d, "Ready")["reason"] == "WaitingForResult"
    assert "waiting for FineTuneJob 'sft' to succeed (phase Running)" in cond(d, "Ready")["message"]
    assert cond(d, "Reconciling")["status"] == "True" and kstatus(d) == "InProgress"
    assert all(c["observedGeneration"] == 1 for c in d.status["conditions"])
    assert d.status["observedGeneration"] == 1


def test_missing_job_is_waited_for():
    w = World(modelserve(), None)
    d = w.decide()
    assert "FineTuneJob 'sft' does not exist (yet)" in cond(d, "Ready")["message"]
    assert kstatus(d) == "InProgress"


def test_rollout_waits_for_the_deployment_then_smoke_tests_then_is_ready():
    w = World(modelserve(), job("c1"))
    d = w.decide()
    dep = written(d, "Deployment")
    rev = d.status["revision"]["hash"]
    assert dep is not None and r.template_revision(dep["spec"]["template"]) == rev
    assert written(d, "PodDisruptionBudget") is not None  # two replicas
    assert d.status["phase"] == "Progressing" and d.status["revision"]["model"] == "pvc://models/sft/c1"
    assert cond(d, "Reconciling")["reason"] == "RollingOut" and kstatus(d) == "InProgress"
    assert ("Normal", "RollingOut") in [(t, why) for t, why, _ in d.events]
    assert d.requeue_after == OPTS.requeue_seconds and d.smoke_request is None

    d = w.decide()  # applied, not yet observed by the Deployment controller
    assert d.writes == [] and d.smoke_request is None and kstatus(d) == "InProgress"
    assert "has not observed the new template" in cond(d, "Progressing")["message"]

    w.available()
    d = w.decide()
    assert d.smoke_request is not None and d.smoke_request.revision == rev
    assert d.smoke_request.endpoint == "http://bot.team.svc:80" and d.smoke_request.expect == "kubetune"
    assert cond(d, "Reconciling")["reason"] == "SmokeTesting"

    d = w.decide(smoke(rev))
    assert d.status["phase"] == "Ready" and d.rollout == "succeeded"
    assert cond(d, "Ready")["status"] == "True" and cond(d, "Ready")["reason"] == "SmokeTestPassed"
    assert cond(d, "Reconciling")["status"] == "False" and cond(d, "Stalled")["status"] == "False"
    assert kstatus(d) == "Current"
    assert d.status["lastRollout"]["result"] == "succeeded"
    assert d.result_to_ready_seconds == pytest.approx(90.0)  # job completed 11:59:00, now 12:00:30
    assert d.status["readyReplicas"] == 2

    # Nothing changed: no write, no Event, the same status.
    d = w.decide()
    assert d.writes == [] and d.events == [] and d.status == d.old_status and d.smoke_request is None


def ready_world(spec: dict[str, Any] | None = None) -> tuple[World, str]:
    w = World(modelserve(spec), job("c1"))
    w.decide()
    w.available()
    rev = w.decide().smoke_request.revision  # type: ignore[union-attr]
    d = w.decide(smoke(rev))
    assert d.status["phase"] == "Ready"
    return w, rev


def test_a_new_result_is_a_new_revision_that_remembers_the_previous_one():
    w, rev1 = ready_world()
    w.job = job("c2")
    d = w.decide()
    rev2 = d.status["revision"]["hash"]
    assert rev2 != rev1 and d.status["revision"]["model"] == "pvc://models/sft/c2"
    assert d.status["previousRevision"]["hash"] == rev1
    dep = written(d, "Deployment")
    assert dep is not None and r.ANNOTATION_PREVIOUS_TEMPLATE in dep["metadata"]["annotations"]
    assert kstatus(d) == "InProgress"


def test_a_failed_smoke_test_rolls_back_and_stalls_until_something_changes():
    w, rev1 = ready_world()
    w.job = job("c2")
    w.decide()
    w.available()
    rev2 = w.decide().smoke_request.revision  # type: ignore[union-attr]
    d = w.decide(smoke(rev2, ok=False, output="I am a teapot"))
    assert d.rollout == "rolled-back" and d.status["phase"] == "Degraded"
    dep = written(d, "Deployment")
    assert dep is not None and r.template_revision(dep["spec"]["template"]) == rev1
    assert dep["metadata"]["annotations"][r.ANNOTATION_FAILED_REVISION] == rev2
    assert d.status["revision"]["hash"] == rev1 and d.status["previousRevision"]["hash"] == rev2
    assert cond(d, "Degraded")["reason"] == "RolledBack" and "I am a teapot" in cond(d, "Degraded")["message"]
    assert cond(d, "Ready")["status"] == "True"
    assert cond(d, "Stalled")["status"] == "True" and kstatus(d) == "Failed"
    assert ("Warning", "RolledBack") in [(t, why) for t, why, _ in d.events]

    # The failed revision is not retried while nothing changes.
    w.available()
    d = w.decide()
    assert d.writes == [] and d.smoke_request is None and d.status["phase"] == "Degraded"
    assert d.events == [] and kstatus(d) == "Failed"

    # A new result rolls out again (from the rolled-back state, rev1 stays the way back).
    w.job = job("c3")
    d = w.decide()
    assert d.status["revision"]["model"] == "pvc://models/sft/c3" and kstatus(d) == "InProgress"
    assert d.status["previousRevision"]["hash"] == rev1


def test_a_first_revision_that_fails_has_nothing_to_roll_back_to():
    w = World(modelserve(), job("c1"))
    w.decide()
    w.available()
    rev = w.decide().smoke_request.revision  # type: ignore[union-attr]
    d = w.decide(smoke(rev, ok=False))
    assert d.rollout == "failed" and d.status["phase"] == "Failed"
    assert "there is no previous revision to roll back to" in cond(d, "Ready")["message"]
    assert cond(d, "Stalled")["reason"] == "SmokeTestFailed" and kstatus(d) == "Failed"
    dep = written(d, "Deployment")
    assert dep is not None and dep["metadata"]["annotations"][r.ANNOTATION_FAILED_REVISION] == rev
    w.available()
    d = w.decide()
    assert d.writes == [] and d.status["phase"] == "Failed" and kstatus(d) == "Failed"
    assert cond(d, "Stalled")["reason"] == "SmokeTestFailed"


def test_progress_deadline_passed_fails_the_rollout():
    w = World(modelserve(), job("c1"))
    w.decide()
    assert w.dep is not None
    w.dep["status"] = {
        "observedGeneration": 1,
        "replicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 0,
        "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "bot-5d" has timed out progressing.'},
        ],
    }  # fmt: skip
    d = w.decide()
    assert d.rollout == "failed" and d.smoke_request is None
    assert cond(d, "Ready")["reason"] == "ProgressDeadlineExceeded"
    assert "has timed out progressing" in cond(d, "Ready")["message"] and kstatus(d) == "Failed"


@pytest.mark.parametrize(
    ("method", "task", "needle"),
    [
        ("full", "sequence-classification", "TGI serves only text generation"),
        ("prefix-tuning", "causal-lm", "train with method lora"),
    ],
)
def test_unsupported_by_the_engine_stalls_with_one_event(method, task, needle):
    w = World(modelserve(), job("c1", method=method, task=task))
    d = w.decide()
    assert written(d, "Deployment") is None and d.status["phase"] == "Failed"
    assert cond(d, "Ready")["reason"] == "UnsupportedByEngine" and needle in cond(d, "Ready")["message"]
    assert cond(d, "Stalled")["reason"] == "UnsupportedByEngine" and kstatus(d) == "Failed"
    assert [why for _, why, _ in d.events] == ["UnsupportedByEngine"]
    assert w.decide().events == []  # the same problem: no second Event


def test_invalid_spec_stalls():
    obj = modelserve(
        {"model": {"uri": "hf://org/tiny"}, "adapters": [{"name": "a", "uri": "hf://x/a"}] * 2}, generation=3
    )
    d = World(obj, None).decide()
    assert d.status["phase"] == "Failed" and d.writes == []
    assert (
        cond(d, "Stalled")["reason"] == "InvalidSpec"
        and "used more than once" in cond(d, "Stalled")["message"]
    )
    assert kstatus(d) == "Failed" and d.status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in d.status["conditions"])


def test_smoke_test_unavailable_is_the_operators_problem_not_the_models():
    w = World(modelserve(), job("c1"))
    w.decide()
    w.available()
    rev = w.decide().smoke_request.revision  # type: ignore[union-attr]
    d = w.decide(SmokeOutcome(rev, unavailable="HF_HUB_OFFLINE is set"))
    assert d.problem and d.rollout is None and d.status["phase"] == "Progressing"
    assert cond(d, "Ready")["reason"] == "SmokeTestUnavailable" and kstatus(d) == "InProgress"


def test_scaled_to_zero_is_current_without_a_smoke_test():
    w = World(modelserve({"model": {"uri": "hf://org/tiny"}, "replicas": 0}), None)
    d = w.decide()
    assert (
        d.smoke_request is None and cond(d, "Ready")["reason"] == "ScaledToZero" and kstatus(d) == "Current"
    )


def test_lost_pods_after_success_are_in_progress():
    w, _ = ready_world()
    assert w.dep is not None
    w.dep["status"].update(availableReplicas=0, readyReplicas=0)
    d = w.decide()
    assert cond(d, "Ready")["reason"] == "NoAvailableReplicas" and kstatus(d) == "InProgress"


def test_a_stale_generation_is_observed():
    w, _ = ready_world()
    w.obj["metadata"]["generation"] = 2
    w.obj["spec"]["replicas"] = 3
    d = w.decide()
    assert d.status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in d.status["conditions"])
    assert written(d, "Deployment")["spec"]["replicas"] == 3  # type: ignore[index]


def test_a_refused_child_is_a_stalled_condition_quoting_the_server_with_one_event():
    w = World(modelserve(), job("c1"))
    d = w.decide()
    w.dep = None  # the API server refused it
    body = (
        '{"kind":"Status","status":"Failure","reason":"Invalid","code":422,"message":"deployments.apps '
        '\\"bot\\" is forbidden: ValidatingAdmissionPolicy \'no-gpus\' denied request: no GPUs here"}'
    )
    message = server_message(body, "422 Unprocessable Entity")
    assert message.startswith('deployments.apps "bot" is forbidden: ValidatingAdmissionPolicy')
    out = refused(d, w.obj, "Deployment", "bot", message, T0)
    stalled = next(c for c in out.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ChildRefused"
    assert "ValidatingAdmissionPolicy 'no-gpus' denied request: no GPUs here" in stalled["message"]
    assert out.problem and out.status["phase"] == "Failed" and kstatus(out) == "Failed"
    assert "revision" not in out.status  # nothing is served: status does not claim a rollout
    assert [why for _, why, _ in out.events] == ["ChildRefused"]
    # The same refusal again: the condition stays, no second Event.
    w.obj = with_status(w.obj, out)  # what the shell wrote
    retry = w.decide()
    w.dep = None
    assert written(retry, "Deployment") is not None  # the write is tried again (with the queue's backoff)
    again = refused(retry, w.obj, "Deployment", "bot", message, T0)
    assert again.events == []
    assert server_message("not json", "403 Forbidden") == "403 Forbidden"


# ---- vLLM: live adapters -------------------------------------------------------------------------


def adapter_job(config_hash: str, r_: int = 16) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "sup", "namespace": "team", "uid": "sup-uid-0123"},
        "spec": {
            "model": {"uri": "hf://org/tiny"},
            "dataset": {"uri": "hf://org/data"},
            "method": {"type": "lora", "lora": {"r": r_}},
            "output": {"uri": "pvc://models/support"},
        },
        "status": {
            "phase": "Succeeded",
            "result": {
                "uri": f"pvc://models/support/{config_hash}",
                "kind": "adapter",
                "configHash": config_hash,
            },
        },
    }


VLLM_SPEC = {
    "engine": "vllm",
    "model": {"uri": "hf://org/tiny"},
    "adapters": [{"name": "support", "fineTuneJobRef": {"name": "sup"}}],
    "rollout": {"smokeTest": {"prompt": "hello", "expect": "kubetune"}},
}


def pod(name: str, **loaded: str) -> PodState:
    """A pod that has LOADED (served name -> path): as one that just started with those --lora-modules."""
    return PodState(name, f"http://127.0.0.1:8000/pods/{name}", dict(loaded))


def serving(w: VLLMWorld, name: str) -> PodState:
    """A pod that serves the version of each adapter the world's jobs have now: under its served name and its
    version name NAME@DIGEST (reconcile/live_adapters.py)."""
    from kubetune.api.v1alpha1 import ModelServe
    from kubetune.reconcile.live_adapters import desired_adapters
    from kubetune.reconcile.sources import resolve_sources

    ms = ModelServe.model_validate({k: w.obj[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    loaded = {}
    for d in desired_adapters(resolve_sources(ms, w.jobs)):
        loaded |= {d.name: d.path, d.staging_name: d.path}
    return PodState(name, f"http://127.0.0.1:8000/pods/{name}", loaded)


class VLLMWorld(World):
    def __init__(self) -> None:
        super().__init__(modelserve(VLLM_SPEC), None)
        self.jobs = {"sup": adapter_job("c1")}
        self.pods: tuple[PodState, ...] = ()

    def decide(self, smoke_outcome=None, outcomes=None) -> Decision:  # type: ignore[override]
        observed = Observed(
            self.obj, self.dep, self.svc, self.pdb, self.jobs, smoke_outcome, self.pods, outcomes
        )
        d = decide(observed, OPTS, self.now)
        self.obj = with_status(self.obj, d)
        for w in d.writes:
            if w["kind"] == "Deployment":
                gen = (self.dep or {}).get("metadata", {}).get("generation", 0) + 1
                self.dep = settled(w, replicas=1, generation=gen)
            elif w["kind"] == "Service":
                self.svc = w
        self.now += dt.timedelta(seconds=10)
        return d


def vllm_ready() -> tuple[VLLMWorld, str, dict[str, Any]]:
    w = VLLMWorld()
    d = w.decide()
    dep = written(d, "Deployment")
    assert dep is not None
    rev = d.status["revision"]["hash"]
    w.pods = (pod("p1", support="/mnt/pvc/models/support/c1"),)
    d = w.decide()
    assert (
        d.smoke_request is not None
        and d.smoke_request.engine == "vllm"
        and d.smoke_request.served_model == "bot"
    )
    d = w.decide(smoke(rev))
    # The pod started with its --lora-modules: which version it read is not known until it is loaded under
    # its version name too.
    (change,) = d.adapter_changes
    assert (change.kind, change.name, change.staging) == ("replace", "support", f"support@{change.digest}")
    w.pods = (serving(w, "p1"),)
    d = w.decide(outcomes=(ChangeOutcome(change),))
    assert d.status["phase"] == "Ready" and w.decide().adapter_changes == []
    return w, rev, dep


def test_vllm_deployment_serves_the_first_set_and_status_counts_the_pods():
    w, rev, dep = vllm_ready()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["vllm", "serve"] and container["image"] == OPTS.vllm_image
    args = container["args"]
    assert args[0] == "org/tiny" and args[args.index("--served-model-name") + 1] == "bot"
    assert args[args.index("--lora-modules") + 1] == "support=/mnt/pvc/models/support/c1"
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "16"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    st = w.obj["status"]
    assert st["servedAdapters"] == [
        {"name": "support", "uri": "pvc://models/support/c1", "digest": st["servedAdapters"][0]["digest"],
         "loadedOnPods": 1, "desiredPods": 1}
    ]  # fmt: skip


def test_vllm_new_result_is_loaded_live_without_touching_the_deployment():
    w, rev, _ = vllm_ready()
    w.jobs = {"sup": adapter_job("c2")}
    d = w.decide()
    assert d.writes == [] and d.status["revision"]["hash"] == rev  # same pod template, same revision
    (change,) = d.adapter_changes
    assert (change.pod, change.kind, change.name, change.path) == (
        "p1",
        "replace",
        "support",
        "/mnt/pvc/models/support/c2",
    )
    assert change.staging == f"support@{change.digest}" and d.adapter_check is not None
    assert d.adapter_check.expect == "kubetune"
    # What the status says while the switch has not happened yet: the old version, on 1 pod.
    assert d.status["servedAdapters"][0]["uri"] == "pvc://models/support/c1"
    assert d.status["servedAdapters"][0]["loadedOnPods"] == 1

    # The shell switched it: the pod now has c2.
    w.pods = (serving(w, "p1"),)
    d = w.decide(outcomes=(ChangeOutcome(change),))
    served = d.status["servedAdapters"][0]
    assert served["uri"] == "pvc://models/support/c2" and served["loadedOnPods"] == 1
    assert served["digest"] == change.digest
    assert ("Normal", "AdapterUpdated") in [(t, why) for t, why, _ in d.events]
    assert d.status["phase"] == "Ready" and kstatus(d) == "Current"
    assert w.decide().adapter_changes == []


def test_vllm_failed_load_keeps_the_old_version_and_is_degraded_once():
    w, _, _ = vllm_ready()
    w.jobs = {"sup": adapter_job("bad")}
    (change,) = w.decide().adapter_changes
    d = w.decide(
        outcomes=(ChangeOutcome(change, "loading ... on pod p1: InternalServerError (HTTP 500): boom"),)
    )
    served = d.status["servedAdapters"][0]
    assert served["uri"] == "pvc://models/support/c1" and served["loadedOnPods"] == 1
    assert served["failedDigest"] == change.digest and "boom" in served["message"]
    assert d.status["phase"] == "Degraded" and cond(d, "Degraded")["reason"] == "AdapterLoadFailed"
    assert cond(d, "Ready")["status"] == "True" and kstatus(d) == "Failed"
    assert [why for _, why, _ in d.events] == ["AdapterLoadFailed"]
    again = w.decide()  # not retried, no second Event, still Degraded
    assert again.adapter_changes == [] and again.events == [] and again.status["phase"] == "Degraded"
    # A new result is tried.
    w.jobs = {"sup": adapter_job("c3")}
    assert [c.path for c in w.decide().adapter_changes] == ["/mnt/pvc/models/support/c3"]


def test_vllm_a_new_pod_gets_the_current_set_and_both_are_counted():
    w, _, _ = vllm_ready()
    old = serving(w, "p2")
    w.jobs = {"sup": adapter_job("c2")}
    w.pods = (serving(w, "p1"), old)
    d = w.decide()
    assert [(c.pod, c.kind) for c in d.adapter_changes] == [("p2", "replace")]
    assert (
        d.status["servedAdapters"][0]["loadedOnPods"] == 1
        and d.status["servedAdapters"][0]["desiredPods"] == 2
    )
    assert kstatus(d) == "InProgress" and cond(d, "Reconciling")["reason"] == "AdapterUpdate"
    w.pods = (serving(w, "p1"), serving(w, "p2"))
    d = w.decide(outcomes=(ChangeOutcome(d.adapter_changes[0]),))
    assert d.status["servedAdapters"][0]["loadedOnPods"] == 2 and kstatus(d) == "Current"


def test_vllm_what_it_cannot_serve_is_unsupported():
    w = VLLMWorld()
    w.jobs = {"sup": adapter_job("c1", r_=1024)}
    d = w.decide()
    assert cond(d, "Ready")["reason"] == "UnsupportedByEngine" and "above 512" in cond(d, "Ready")["message"]
    job = adapter_job("c1")
    job["spec"]["method"] = {"type": "prefix-tuning"}
    job["status"]["result"]["kind"] = "prefix"
    w.jobs = {"sup": job}
    d = w.decide()
    assert "vLLM cannot load" in cond(d, "Ready")["message"] and kstatus(d) == "Failed"
