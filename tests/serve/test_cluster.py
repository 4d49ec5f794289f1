"""ModelServe against a real API server and a real `kubetune operator` process.

kwok makes the TGI pods Ready; the smoke test runs through huggingface_hub's InferenceClient against the
loopback TGI-protocol server (the operator's KUBETUNE_SERVE_ENDPOINT_OVERRIDE points there), which serves
a tiny GPT-2 and a LoRA adapter trained by the kubetune trainer earlier in this session. A FineTuneJob "finishing" is simulated the
way the trainer reports it: a patch of its status.result.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.admission import denying_policy
from tests.support.crds import apply_crds
from tests.support.operator import Operator
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.kwok, pytest.mark.slow]

GROUP, VERSION = "kubetune.io", "v1alpha1"
NS_PREFIX = "ms"


def start_serve_operator(kube, log_dir, endpoint: str, **env: str) -> Operator:
    """A started `kubetune operator` for the ModelServe tests (NS_PREFIX-* namespaces) that reaches every
    model server at ENDPOINT (a loopback server standing in for the pods)."""
    apply_crds(kube.api)
    op = Operator(
        kube.kubeconfig,
        log_dir,
        namespaces=f"{NS_PREFIX}-*",
        KUBETUNE_SERVE_ENDPOINT_OVERRIDE=endpoint,
        KUBETUNE_REQUEUE_SECONDS="1",
        # The operator talks to the model server, never to the Hub: huggingface_hub's offline switch would
        # block that.
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        **env,
    )
    op.start()
    return op


@pytest.fixture(scope="module")
def serve_operator(kube, tgi_server, tmp_path_factory):
    op = start_serve_operator(kube, tmp_path_factory.mktemp("serve-operator"), tgi_server.url)
    yield op
    op.stop()


class World:
    """The test's view of one namespace."""

    def __init__(self, kube, namespace: str, op: Operator):
        from kubernetes import client

        self.ns, self.op = namespace, op
        self.co = client.CustomObjectsApi(kube.api)
        self.apps = client.AppsV1Api(kube.api)
        self.core = client.CoreV1Api(kube.api)
        self.policy = client.PolicyV1Api(kube.api)

    # FineTuneJobs
    def job(self, name: str, method: str = "lora", task: str = "causal-lm", merge: bool = False) -> None:
        spec: dict[str, Any] = {
            "model": {
                "uri": "hf://org/tiny",
                "task": task,
                **({"numLabels": 2} if "classification" in task else {}),
            },
            "dataset": {"uri": "hf://org/data"},
            "method": {"type": method},
            "training": {"maxSteps": 5},
            "resources": {"gpusPerNode": 1},
            "output": {"uri": f"s3://bucket/{name}", "mergeAdapter": merge},
        }
        self.co.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            "finetunejobs",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "FineTuneJob",
                "metadata": {"name": name},
                "spec": spec,
            },
        )

    def report_result(self, name: str, kind: str, config_hash: str, merged: bool = False) -> None:
        """What the trainer does at the end of a run: patch the job's status.result."""
        result = {"uri": f"s3://bucket/{name}/{config_hash}", "kind": kind, "configHash": config_hash}
        if merged:
            result["mergedUri"] = f"s3://bucket/{name}/{config_hash}/merged"
        self.co.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, "finetunejobs", name, {"status": {"result": result}}
        )

    # ModelServes
    def serve(self, name: str, spec: dict[str, Any]) -> None:
        self.co.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            "modelserves",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ModelServe",
                "metadata": {"name": name},
                "spec": spec,
            },
        )

    def status(self, name: str) -> dict[str, Any]:
        return (
            self.co.get_namespaced_custom_object(GROUP, VERSION, self.ns, "modelserves", name).get("status")
            or {}
        )

    def cond(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def wait(self, name: str, fn, what: str, timeout: float = 60.0) -> dict[str, Any]:
        def check():
            st = self.status(name)
            return st if fn(st) else None

        try:
            return wait_for(check, timeout, 0.2, what)
        except AssertionError:
            raise AssertionError(
                f"timed out waiting for {what}; status: {json.dumps(self.status(name), indent=1)}\n"
                f"---- operator log ----\n{self.op.log_tail(80)}"
            ) from None

    def deployment(self, name: str):
        return self.apps.read_namespaced_deployment(name, self.ns)

    def template_revision(self, name: str) -> str:
        return self.deployment(name).spec.template.metadata.annotations["kubetune.io/revision"]

    def events(self, name: str) -> list[tuple[str, str, str]]:
        return [
            (e.type, e.reason, e.message)
            for e in self.core.list_namespaced_event(self.ns).items
            if e.involved_object.name == name and e.involved_object.kind == "ModelServe"
        ]


@pytest.fixture
def world(kube, serve_operator):
    ns = kube.new_namespace(NS_PREFIX)
    yield World(kube, ns, serve_operator)
    kube.delete_namespace(ns)


def phase_is(phase: str):
    return lambda st: st.get("phase") == phase


def ready(rev_hash: str | None = None):
    def check(st):
        rd = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
        return (
            st.get("phase") == "Ready"
            and rd.get("status") == "True"
            and (rev_hash is None or (st.get("revision") or {}).get("hash") == rev_hash)
        )

    return check


def test_new_results_roll_out_pass_the_smoke_test_and_roll_back_when_they_fail(world, tgi):
    world.job("sft", method="lora", merge=True)
    world.job("support", method="lora")
    world.serve(
        "bot",
        {
            "model": {"fineTuneJobRef": {"name": "sft"}},
            "adapters": [{"name": "support", "fineTuneJobRef": {"name": "support"}}],
            "replicas": 2,
            "rollout": {"smokeTest": {"prompt": "hello", "maxNewTokens": 8, "expect": r"^kubetune\b"}},
        },
    )
    # No result yet: waiting, nothing deployed.
    st = world.wait(
        "bot",
        lambda s: (
            next((c for c in s.get("conditions") or [] if c["type"] == "Ready"), {}).get("reason")
            == "WaitingForResult"
        ),
        "WaitingForResult",
    )
    assert st["phase"] == "Pending"
    assert "waiting for FineTuneJob 'sft' to succeed" in world.cond("bot", "Ready")["message"]

    # The trainer reports both results: rollout, Available (kwok), smoke test through the client: Ready.
    world.report_result("support", "adapter", "a1")
    world.report_result("sft", "adapter", "s1", merged=True)
    st = world.wait("bot", ready(), "Ready after the first rollout", 90)
    rev1 = st["revision"]["hash"]
    assert world.template_revision("bot") == rev1
    assert st["revision"]["model"] == "s3://bucket/sft/s1/merged"
    assert st["revision"]["adapters"] == ["support=s3://bucket/support/a1"]
    assert st["endpoint"].startswith("http://bot.ms-") and st["endpoint"].endswith(".svc:80")
    assert st["lastRollout"]["result"] == "succeeded"
    assert st["readyReplicas"] == 2 and st["replicas"] == 2
    assert world.cond("bot", "Ready")["reason"] == "SmokeTestPassed"
    assert "adapter support: generated 'kubetune support" in world.cond("bot", "Ready")["message"]
    assert {r["parameters"].get("adapter_id") for r in tgi.requests} == {None, "support"}
    dep = world.deployment("bot")
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
    assert env["MODEL_ID"] == "/mnt/kubetune/models/model"
    assert env["LORA_ADAPTERS"] == "support=/mnt/kubetune/models/adapter-support"
    assert world.policy.read_namespaced_pod_disruption_budget("bot", world.ns).spec.max_unavailable == 1
    assert world.core.read_namespaced_service("bot", world.ns).spec.ports[0].port == 80

    # A new result whose server errors: roll back to rev1, say why.
    tgi.set_mode("error")
    world.report_result("sft", "adapter", "s2", merged=True)
    st = world.wait(
        "bot", lambda s: (s.get("lastRollout") or {}).get("result") == "rolled-back", "rollback", 90
    )
    assert st["phase"] == "Degraded"
    assert st["revision"]["hash"] == rev1 and st["previousRevision"]["model"] == "s3://bucket/sft/s2/merged"
    degraded = world.cond("bot", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "RolledBack"
    assert "GenerationError: CUDA error" in degraded["message"]
    assert "GenerationError" in st["lastRollout"]["message"]
    wait_for(lambda: world.template_revision("bot") == rev1, 30, 0.2, "the Deployment back on rev1")
    assert any(t == "Warning" and r == "RolledBack" for t, r, _ in world.events("bot"))
    # The failed revision is not retried while nothing changes, even when the server recovers.
    tgi.set_mode("ok")
    time.sleep(3)
    assert world.template_revision("bot") == rev1 and world.status("bot")["phase"] == "Degraded"

    # A new result whose output does not match expect: rolled back with the output in the message.
    tgi.set_mode("wrong", "I am a teapot")
    world.report_result("sft", "adapter", "s3", merged=True)
    st = world.wait(
        "bot",
        lambda s: (
            (s.get("lastRollout") or {}).get("result") == "rolled-back"
            and (s.get("previousRevision") or {}).get("model") == "s3://bucket/sft/s3/merged"
        ),
        "second rollback",
        90,
    )
    assert st["revision"]["hash"] == rev1
    assert "output 'I am a teapot' does not match expect" in world.cond("bot", "Degraded")["message"]

    # A good result: rolls out and is Ready again, Degraded cleared.
    tgi.set_mode("ok")
    world.report_result("sft", "adapter", "s4", merged=True)
    st = world.wait(
        "bot",
        lambda s: ready()(s) and s["revision"]["model"] == "s3://bucket/sft/s4/merged",
        "Ready on the fourth result",
        90,
    )
    assert world.cond("bot", "Degraded")["status"] == "False"
    assert st["previousRevision"]["hash"] == rev1
    assert world.template_revision("bot") == st["revision"]["hash"]
    assert world.op.metric("kubetune_modelserve_rollouts_total", result="rolled-back") >= 2
    assert world.op.metric("kubetune_modelserve_smoke_test_seconds_count") >= 4


def test_a_first_rollout_that_fails_has_nothing_to_roll_back_to(world, tgi):
    tgi.set_mode("error")
    world.serve("hub", {"model": {"uri": "hf://org/tiny"}, "rollout": {"smokeTest": {"maxNewTokens": 2}}})
    st = world.wait("hub", phase_is("Failed"), "Failed", 90)
    assert st["lastRollout"]["result"] == "failed"
    ready_c = world.cond("hub", "Ready")
    assert ready_c["status"] == "False" and ready_c["reason"] == "SmokeTestFailed"
    assert "there is no previous revision" in ready_c["message"] and "GenerationError" in ready_c["message"]
    assert (
        world.deployment("hub").metadata.annotations["kubetune.io/failed-revision"] == st["revision"]["hash"]
    )


@pytest.mark.parametrize(
    ("method", "task", "kind", "needle"),
    [
        ("full", "sequence-classification", "full", "TGI serves only text generation"),
        ("prefix-tuning", "causal-lm", "prefix", "train with method lora"),
    ],
    ids=["classifier", "prefix-tuning"],
)
def test_what_tgi_cannot_serve_is_unsupported_by_engine(world, method, task, kind, needle):
    world.job("odd", method=method, task=task)
    world.report_result("odd", kind, "x1")
    world.serve("odd", {"model": {"fineTuneJobRef": {"name": "odd"}}})
    st = world.wait(
        "odd",
        lambda s: any(
            c["type"] == "Ready" and c["reason"] == "UnsupportedByEngine" for c in s.get("conditions") or []
        ),
        "UnsupportedByEngine",
    )
    assert st["phase"] == "Failed"
    assert needle in world.cond("odd", "Ready")["message"]
    assert world.apps.list_namespaced_deployment(world.ns).items == []
    assert any(r == "UnsupportedByEngine" for _, r, _ in world.events("odd"))


LONG_63 = "m" * 63
# 253 characters: four DNS labels of 63 and one of 1, joined by dots (the longest legal name).
LONG_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


@pytest.mark.parametrize("name", ["llama.v2.serve", LONG_63, LONG_253], ids=["dotted", "63", "253"])
def test_any_legal_name_gets_valid_children(world, tgi, name):
    from kubetune.render import modelserve as r

    assert len(LONG_253) == 253
    world.serve(name, {"model": {"uri": "hf://org/tiny"}, "rollout": {"smokeTest": {"maxNewTokens": 2}}})
    st = world.wait(name, ready(), f"{name[:20]}... Ready", 90)
    service = r.service_name_of(name)
    assert len(service) <= 63 and service[0].isalpha() and "." not in service
    assert world.core.read_namespaced_service(service, world.ns).spec.selector
    dep = world.deployment(r.deployment_name_of(name))
    labels = dep.spec.template.metadata.labels
    assert all(len(v) <= 63 for v in labels.values())
    assert st["endpoint"] == f"http://{service}.{world.ns}.svc:80"
    # Stable: the names depend on the ModelServe's name only.
    assert r.service_name_of(name) == service and r.deployment_name_of(name) == dep.metadata.name
    assert world.cond(name, "Stalled")["status"] == "False"


def test_a_child_refused_by_an_admission_policy_is_a_condition_quoting_it(world, tgi, kube):
    # The API server compiles a new policy within a second or so: denying_policy waits until it denies.
    probe = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probe"},
             "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                      "template": {"metadata": {"labels": {"a": "b"}},
                                   "spec": {"containers": [{"name": "c", "image": "x"}]}}}}  # fmt: skip
    with denying_policy(
        kube,
        world.ns,
        "apps",
        "deployments",
        "object.spec.replicas <= 1",
        "model servers may run one replica in this namespace; ask the platform team",
        lambda: world.apps.create_namespaced_deployment(world.ns, probe, dry_run="All"),
    ):
        world.serve("big", {"model": {"uri": "hf://org/tiny"}, "replicas": 2,
                            "rollout": {"smokeTest": {"maxNewTokens": 2}}})  # fmt: skip
        st = world.wait(
            "big",
            lambda s: any(
                c["type"] == "Stalled" and c["reason"] == "ChildRefused" for c in s.get("conditions") or []
            ),
            "ChildRefused",
        )
        stalled = world.cond("big", "Stalled")
        assert stalled["status"] == "True"
        assert "the API server refused Deployment big" in stalled["message"]
        assert (
            "model servers may run one replica in this namespace; ask the platform team" in stalled["message"]
        )
        assert "ValidatingAdmissionPolicy" in stalled["message"]
        assert st["phase"] == "Failed" and world.cond("big", "Ready")["status"] == "False"
        assert stalled["observedGeneration"] == st["observedGeneration"] == 1
        # One Event, not one per retry.
        time.sleep(4)
        refusals = [m for _, why, m in world.events("big") if why == "ChildRefused"]
        assert len(refusals) == 1 and "ask the platform team" in refusals[0]

        # What the message says to change, changed: the ModelServe gets its Deployment and is Ready.
        world.co.patch_namespaced_custom_object(
            GROUP, VERSION, world.ns, "modelserves", "big", {"spec": {"replicas": 1}}
        )
        st = world.wait("big", ready(), "Ready after the fix", 90)
        assert world.cond("big", "Stalled")["status"] == "False" and st["observedGeneration"] == 2
