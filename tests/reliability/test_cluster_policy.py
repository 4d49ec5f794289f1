"""Cluster policy: kubetune's pods in a namespace that enforces the "restricted" Pod Security Standard (the
API server's built-in PodSecurity admission), and a LimitRange with defaults."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from kubetune.api.v1alpha1 import validate_document
from kubetune.reconcile.sources import resolve_sources
from kubetune.render.finetunejob import RenderOptions, render_job
from kubetune.render.modelserve import render_pod_template
from kubetune.settings import DEFAULT_TGI_IMAGE, DEFAULT_TRAINER_IMAGE, DEFAULT_VLLM_IMAGE
from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture
def restricted_ns(kube, rel_ns) -> str:
    client.CoreV1Api(kube.api).patch_namespace(rel_ns, {"metadata": {"labels": RESTRICTED}})
    return rel_ns


def admit(kube, ns: str, pod_spec: dict, name: str) -> str | None:
    """None when PodSecurity admits a pod with POD_SPEC in NS (server-side dry run), else its refusal."""
    # The operator makes the trainer's ServiceAccount with the Job; this pod is only a dry run.
    pod_spec = {**pod_spec, "serviceAccountName": "default"}
    try:
        client.CoreV1Api(kube.api).create_namespaced_pod(
            ns,
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec},
            dry_run="All",
        )
        return None
    except client.ApiException as exc:
        assert exc.status == 403, exc.body
        return json.loads(exc.body)["message"]


@pytest.mark.kwok
def test_trainer_pods_run_in_a_restricted_namespace(kube, restricted_ns):
    ftj = FTJ(kube, restricted_ns)
    ftj.create(tiny_job("restricted"))
    st = ftj.wait_phase("restricted", "Succeeded", 60)
    assert st["attempts"] == 1, st
    # The Job controller created its pod: PodSecurity let it through (else: FailedCreate, no pod).
    refused = [
        e.message
        for e in ftj.core.list_namespaced_event(restricted_ns).items
        if e.reason == "FailedCreate" and "violates PodSecurity" in (e.message or "")
    ]
    assert not refused, refused
    # A multi-node, PVC-backed, LoRA example too (more volumes, env from Secrets): admitted as rendered.
    doc = tiny_job("multi", resources={"nodes": 2, "gpusPerNode": 8})
    doc["metadata"]["namespace"] = restricted_ns
    job = render_job(validate_document(doc).obj, RenderOptions())
    assert admit(kube, restricted_ns, job["spec"]["template"]["spec"], "multi-0") is None


def _serve_pod_spec(engine: str, uri: str) -> dict:
    spec = {"engine": engine, "model": {"uri": uri}, "resources": {"gpus": 1}}
    if uri.startswith("s3://"):
        spec["model"]["secretRef"] = {"name": "s3-credentials"}
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelServe",
        "metadata": {"name": engine, "namespace": "default"},
        "spec": spec,
    }
    validated = validate_document(doc)
    assert validated.ok, validated.problems
    ms = validated.obj
    images = {"tgi": DEFAULT_TGI_IMAGE, "vllm": DEFAULT_VLLM_IMAGE}
    template = render_pod_template(
        ms,
        resolve_sources(ms, {}),
        image=images[engine],
        trainer_image=DEFAULT_TRAINER_IMAGE,
        revision_hash_="r1",
    )
    return template["spec"]


def assert_runs_as_non_root_with_writable_scratch(pod_spec: dict) -> None:
    """What the images need besides admission: a non-root uid that can write its caches and /tmp."""
    assert pod_spec["securityContext"]["runAsUser"] != 0 and pod_spec["securityContext"]["fsGroup"]
    empty_dirs = {v["name"] for v in pod_spec["volumes"] if "emptyDir" in v}
    (server,) = pod_spec["containers"]
    mounted = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in server["env"]}
    for path in ("/tmp", "/data", env["HOME"]):
        assert mounted.get(path) in empty_dirs, (path, mounted)
    assert env["USER"]  # torch's cache paths call getpass.getuser(): the uid has no passwd entry


@pytest.mark.parametrize(
    ("engine", "uri"),
    [
        ("tgi", "hf://org/model"),
        ("tgi", "s3://bucket/model"),
        ("vllm", "hf://org/model"),
        ("vllm", "s3://bucket/model"),
    ],
)
def test_serving_pods_are_admitted_in_a_restricted_namespace(kube, restricted_ns, engine, uri):
    pod_spec = _serve_pod_spec(engine, uri)
    assert bool(pod_spec.get("initContainers")) == uri.startswith("s3://")  # the download init container
    assert_runs_as_non_root_with_writable_scratch(pod_spec)
    refusal = admit(kube, restricted_ns, pod_spec, f"{engine}-0")
    assert refusal is None, refusal


def test_a_pod_without_the_security_context_is_refused(kube, restricted_ns):
    """The namespace really enforces "restricted": the same pod without its securityContexts is refused."""
    pod_spec = _serve_pod_spec("tgi", "s3://bucket/model")
    pod_spec.pop("securityContext")
    for c in [*pod_spec["containers"], *pod_spec["initContainers"]]:
        c.pop("securityContext")
    refusal = admit(kube, restricted_ns, pod_spec, "tgi-0")
    assert refusal is not None and "violates PodSecurity" in refusal, refusal
    for what in ("allowPrivilegeEscalation", "capabilities", "runAsNonRoot", "seccompProfile"):
        assert what in refusal, refusal


@pytest.mark.kwok
def test_a_quota_that_forbids_the_gpus_gives_a_condition_quoting_it(kube, rel_ns):
    core = client.CoreV1Api(kube.api)
    core.create_namespaced_resource_quota(
        rel_ns,
        {"metadata": {"name": "gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}},
    )
    wait_for(  # enforced once the controller-manager computed its usage
        lambda: (core.read_namespaced_resource_quota("gpus", rel_ns).status.hard or {}).get(
            "requests.nvidia.com/gpu"
        ),
        30,
        0.2,
        "the quota's status",
    )
    ftj = FTJ(kube, rel_ns)
    ftj.create(tiny_job("overquota"))
    # The Job is created (a quota on GPUs counts pods, not Jobs), the Job controller's pods are refused.
    running = wait_for(
        lambda: (c := ftj.cond("overquota", "Running")).get("reason") == "PodsRefused" and c,
        45,
        0.3,
        "Running=False PodsRefused",
    )
    assert running["status"] == "False"
    assert "exceeded quota: gpus" in running["message"], running["message"]
    assert "requests.nvidia.com/gpu=1" in running["message"] and "ResourceQuota" in running["message"]
    assert not ftj.pods("overquota")
    events = [e for e in ftj.events("overquota") if e.reason == "PodsRefused"]
    assert len(events) == 1 and events[0].type == "Warning", events
    # Room in the quota: the Job controller's next try makes the pod and the run goes on.
    core.patch_namespaced_resource_quota("gpus", rel_ns, {"spec": {"hard": {"requests.nvidia.com/gpu": "8"}}})
    st = ftj.wait_phase("overquota", "Succeeded", 90)
    assert st["attempts"] == 1, st


@pytest.mark.kwok
def test_a_limitrange_with_defaults_does_not_break_the_job(kube, rel_ns):
    core = client.CoreV1Api(kube.api)
    core.create_namespaced_limit_range(
        rel_ns,
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "defaults"},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "2", "memory": "4Gi"},
                        "defaultRequest": {"cpu": "500m", "memory": "1Gi"},
                        "max": {"cpu": "64", "memory": "512Gi"},
                    }
                ]
            },
        },
    )
    ftj = FTJ(kube, rel_ns)
    ftj.create(tiny_job("limited", labels={"kwok.kubetune.io/run-duration": "2s"}))
    (pod,) = wait_for(lambda: ftj.pods("limited"), 45, 0.2, "the trainer pod")
    res = pod.spec.containers[0].resources
    # The LimitRange filled what the FineTuneJob left open; the GPU request stays the operator's.
    assert res.limits["cpu"] == "2" and res.requests["memory"] == "1Gi", res
    assert res.limits["nvidia.com/gpu"] == "1" == res.requests["nvidia.com/gpu"], res
    st = ftj.wait_phase("limited", "Succeeded", 60)
    assert st["attempts"] == 1, st
