"""Render unit tests: every FineTuneJob in examples/ -> the children, checked field by field. No cluster."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from kubetune.api.v1alpha1 import TrainerConfig, pvc_claims, validate_document
from kubetune.api.v1alpha1.trainerconfig import (
    CACHE_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    ENV_MASTER_ADDR,
    ENV_NODE_RANK,
    ENV_NUM_NODES,
    WORK_DIR,
)
from kubetune.render.common import child_name, label_value, owner_reference, short_hash
from kubetune.render.finetunejob import (
    KUEUE_QUEUE_LABEL,
    RenderOptions,
    _volume_name,
    job_name,
    needs_service,
    render_configmap,
    render_job,
    render_rbac,
    render_service,
    run_id,
    secret_uses,
)
from kubetune.render.publishing import registry_secrets
from tests.support.objects import example_docs, tiny_job

OPTS = RenderOptions(trainer_image="example.org/trainer:test", termination_grace_seconds=120)


def render_children(job, opts, attempt: int = 1, chain=None) -> list[dict]:
    """Every child of an attempt, in the order the operator applies them (the Job last; the Service only for
    multi-node runs)."""
    return [
        *render_rbac(job),
        render_configmap(job, opts, chain),
        *([render_service(job, attempt)] if needs_service(job) else []),
        render_job(job, opts, attempt, chain=chain),
    ]


EXAMPLES = example_docs()


def load(doc: dict, ns: str = "team-a", uid: str = "0000-uid", generation: int = 3):
    doc = copy.deepcopy(doc)
    doc["metadata"].update(namespace=ns, uid=uid, generation=generation)
    v = validate_document(doc)
    assert v.ok, v.problems
    return v.obj


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_examples_exist():
    assert len(EXAMPLES) >= 10, [f for f, _ in EXAMPLES]


@pytest.mark.parametrize("doc", [d for _, d in EXAMPLES], ids=[f for f, _ in EXAMPLES])
def test_example_children(doc):
    ftj = load(doc)
    spec = ftj.spec
    name = ftj.metadata.name
    children = render_children(ftj, OPTS)
    kinds = [c["kind"] for c in children]
    # The headless Service (rendezvous at pod 0 by DNS name) only for multi-node runs
    multi = spec.resources.nodes > 1
    assert kinds == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        *(["Service"] if multi else []),
        "Job",
    ]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "name": name,
                "uid": "0000-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["kubetune.io/finetunejob"] == name
        for k, v in (ftj.metadata.labels or {}).items():
            assert meta["labels"][k] == v  # the owner's labels are propagated
        assert len(meta["name"]) <= 63

    sa, role, rb, cm, job = (c for c in children if c["kind"] != "Service")
    svc = render_service(ftj)  # the multi-node runs' Service, checked for every example
    # Job: Indexed, one pod per node, a failed pod fails the attempt
    js = job["spec"]
    assert job["metadata"]["name"] == f"{name}-trainer"
    assert js["completionMode"] == "Indexed"
    assert js["completions"] == js["parallelism"] == spec.resources.nodes
    assert js["backoffLimit"] == 0
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    assert js["suspend"] is bool(spec.suspend or spec.queue_name)
    if spec.queue_name:
        assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == spec.queue_name
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] == 120
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["image"] == (spec.image or OPTS.trainer_image)
    assert c["command"] == ["kubetune-trainer", "launch"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    limits = c["resources"].get("limits", {})
    if spec.resources.gpus_per_node:
        assert limits[spec.resources.gpu_resource] == str(spec.resources.gpus_per_node)
    else:
        assert not any("gpu" in k for k in limits)
    if spec.resources.memory:
        assert limits["memory"] == c["resources"]["requests"]["memory"] == str(spec.resources.memory)
    if spec.resources.cpu:
        assert limits["cpu"] == str(spec.resources.cpu)
    for key, want in (
        ("nodeSelector", spec.resources.node_selector),
        ("priorityClassName", spec.resources.priority_class_name),
    ):
        if want:
            assert pod[key] == want
    if spec.resources.tolerations:
        assert len(pod["tolerations"]) == len(spec.resources.tolerations)
    if spec.image_pull_secrets:
        assert pod["imagePullSecrets"] == [{"name": s.name} for s in spec.image_pull_secrets]
    # volumes: config, shm (memory-backed, sized), scratch, cache, /tmp, one per claim
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert vols["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": str(spec.resources.shared_memory)}
    assert {CONFIG_DIR, "/dev/shm", WORK_DIR, CACHE_DIR, "/tmp"} <= set(mounts)
    claims = pvc_claims(ftj)
    for claim in claims:
        m = mounts[f"/mnt/pvc/{claim}"]
        assert vols[m["name"]]["persistentVolumeClaim"]["claimName"] == claim
    # ... and one per registry Secret of an oci:// output or model (mounted as a file)
    assert len(vols) == 5 + len(claims) + len(registry_secrets(ftj))
    # env: rank from the completion index, world, rendezvous; secrets only as secretKeyRef
    env = env_of(job)
    assert env[ENV_NODE_RANK]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env[ENV_NUM_NODES]["value"] == str(spec.resources.nodes)
    assert env[ENV_MASTER_ADDR]["value"] == f"{name}-trainer-0.{svc['metadata']['name']}"
    for use in secret_uses(ftj):
        if use.required_keys == (".dockerconfigjson",):  # registry credentials: a file, never env
            assert any((v.get("secret") or {}).get("secretName") == use.name for v in vols.values())
            continue
        refs = [
            e["valueFrom"]["secretKeyRef"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert any(r["name"] == use.name and r["key"] == use.required_keys[0] for r in refs)
    for e in spec.env:
        assert env[e.name] == e.to_dict()
    # Service: headless, selects this attempt's pods
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    # RBAC: exactly this object
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.io"],
            "resources": ["finetunejobs"],
            "resourceNames": [name],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["kubetune.io"],
            "resources": ["finetunejobs/status"],
            "resourceNames": [name],
            "verbs": ["get", "patch"],
        },
    ]
    assert rb["roleRef"]["name"] == role["metadata"]["name"]
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "team-a"}
    ]
    # ConfigMap: the trainer config, no secrets
    config = TrainerConfig.model_validate(yaml.safe_load(cm["data"][CONFIG_FILE]))
    assert config.runtime.run_id == run_id(ftj)
    assert config.runtime.report_status is True
    assert config.runtime.uid == "0000-uid"
    assert config.job.spec.model.uri == spec.model.uri
    assert "valueFrom" not in cm["data"][CONFIG_FILE] and "AWS_SECRET" not in cm["data"][CONFIG_FILE]


def test_render_is_deterministic_and_lifecycle_fields_keep_the_run():
    doc = tiny_job("det")
    a = load(doc)
    assert render_children(a, OPTS) == render_children(load(doc), OPTS)
    changed = copy.deepcopy(doc)
    changed["spec"].update(
        suspend=True,
        backoffLimit=7,
        activeDeadlineSeconds=100,
        pendingDeadlineSeconds=5,
        ttlSecondsAfterFinished=1,
    )
    b = load(changed, generation=9)
    assert run_id(a) == run_id(b)
    assert render_configmap(a, OPTS) == render_configmap(b, OPTS)
    changed["spec"]["training"] = {"maxSteps": 11}
    assert run_id(load(changed)) != run_id(a)


def test_attempt_names_and_service_selector():
    ftj = load(tiny_job("att"))
    assert job_name("att", 1) == "att-trainer"
    assert job_name("att", 3) == "att-trainer-3"
    job = render_job(ftj, OPTS, 3)
    assert job["metadata"]["name"] == "att-trainer-3"
    assert job["metadata"]["labels"]["kubetune.io/attempt"] == "3"
    assert env_of(job)[ENV_MASTER_ADDR]["value"] == "att-trainer-3-0.att-trainer"
    assert render_service(ftj, 3)["spec"]["selector"] == {"batch.kubernetes.io/job-name": "att-trainer-3"}


# Names the operator gave children of long or dotted names, pinned: a restarted or upgraded operator must find
# the children it made before (a changed name would make a second Job beside the first), so the names may not
# depend on the process (Python's salted hash()) or change with a refactoring.
PINNED_NAMES = {
    ("x" * 200, "trainer-config", 63): "x" * 39 + "-aa20c23e-trainer-config",
    ("x" * 200, "trainer", 63): "x" * 46 + "-aa20c23e-trainer",
    ("x" * 199 + "y", "trainer", 63): "x" * 46 + "-78e9f58a-trainer",
    ("x" * 200, "trainer-12", 52): "x" * 32 + "-aa20c23e-trainer-12",
    ("llama.v2.sft", "trainer", 63): "llama-v2-sft-f7bfc552-trainer",
}


def test_long_names_are_shortened_stably():
    for (owner, suffix, limit), pinned in PINNED_NAMES.items():
        name = job_name(owner, 12) if suffix == "trainer-12" else child_name(owner, suffix)
        assert name == pinned, (owner[:20], suffix, name)
        assert len(name) <= limit and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    # The same in another process with another hash seed (what a restarted operator computes).
    code = (
        "import json, sys; from kubetune.render.common import child_name; from kubetune.render.finetunejob "
        "import job_name; print(json.dumps([job_name(o, 12) if s == 'trainer-12' else child_name(o, s) "
        "for o, s in json.loads(sys.argv[1])]))"
    )
    keys = [[owner, suffix] for owner, suffix, _ in PINNED_NAMES]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(keys)], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout  # fmt: skip
        assert json.loads(out) == list(PINNED_NAMES.values()), seed


def test_labels_propagate_and_reserved_ones_do_not():
    ftj = load(
        tiny_job(
            "lbl", labels={"team": "nlp", "kwok.kubetune.io/outcome": "fail", "kubetune.io/attempt": "99"}
        )
    )
    job = render_job(ftj, OPTS)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["team"] == "nlp" and labels["kwok.kubetune.io/outcome"] == "fail"
        assert labels["kubetune.io/attempt"] == "1"


def test_queue_name_starts_suspended_with_kueue_label():
    ftj = load(tiny_job("q", queueName="gpu-queue"))
    job = render_job(ftj, OPTS)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


def test_secrets_reach_env_by_reference_only():
    doc = tiny_job(
        "sec",
        model={"uri": "hf://meta-llama/Llama-3.1-8B", "secretRef": {"name": "hf", "key": "token"}},
        output={"uri": "s3://my-bucket/p", "secretRef": {"name": "s3"}},
        env=[{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_HOME", "value": "/x"}],
    )
    ftj = load(doc)
    env = env_of(render_job(ftj, OPTS))
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["HF_HOME"] == {"name": "HF_HOME", "value": "/x"}  # the user's value wins, once
    names = [e["name"] for e in render_job(ftj, OPTS)["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))
    assert [(u.name, u.required_keys) for u in secret_uses(ftj)] == [
        ("s3", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
        ("hf", ("token",)),
    ]


def test_pvc_volumes_read_only_unless_written():
    doc = tiny_job(
        "pvc",
        model={"uri": "pvc://base/llama"},
        dataset={"uri": "pvc://data/x.jsonl"},
        output={"uri": "pvc://models/out"},
    )
    job = render_job(load(doc), OPTS)
    vols = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert vols == {
        "base": {"claimName": "base", "readOnly": True},
        "data": {"claimName": "data", "readOnly": True},
        "models": {"claimName": "models", "readOnly": False},
    }


def test_owner_reference_shape():
    ref = owner_reference(
        {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "a", "uid": "u"}}
    )
    assert ref["controller"] is True and ref["blockOwnerDeletion"] is True


def test_rbac_names_match():
    sa, role, rb = render_rbac(load(tiny_job("r")))
    assert sa["metadata"]["name"] == role["metadata"]["name"] == rb["metadata"]["name"] == "r-trainer"


DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LEGAL_NAMES = {
    "dotted": "llama.v2.sft",
    "digit-first": "7b.chat",
    "63": "m" * 30 + "." + "n" * 32,
    "253": ".".join(["abcdefgh" * 7 + "abcdefg"] * 3) + "." + "z" * 61,
}


@pytest.mark.parametrize("name", LEGAL_NAMES.values(), ids=LEGAL_NAMES.keys())
@pytest.mark.parametrize("attempt", [1, 12])
def test_any_legal_name_gives_valid_child_names(name, attempt):
    assert len(name) <= 253 and DNS1123_SUBDOMAIN.fullmatch(name)
    ftj = load(tiny_job(name, resources={"nodes": 2, "gpusPerNode": 1}))
    children = render_children(ftj, OPTS, attempt)
    assert {c["kind"] for c in children} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Job",
    }
    for child in children:
        meta = child["metadata"]
        assert DNS1035.fullmatch(meta["name"]) and len(meta["name"]) <= 63, (child["kind"], meta["name"])
        for key, value in meta["labels"].items():
            assert LABEL_VALUE.fullmatch(value) and len(value) <= 63, (key, value)
        assert meta["ownerReferences"][0]["name"] == name
    job = next(c for c in children if c["kind"] == "Job")
    service = next(c for c in children if c["kind"] == "Service")
    jname = job["metadata"]["name"]
    assert len(jname) <= 52  # pod hostnames JOB-INDEX stay DNS labels
    pod = job["spec"]["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert env_of(job)[ENV_MASTER_ADDR]["value"] == f"{jname}-0.{service['metadata']['name']}"
    for value in pod["metadata"]["labels"].values():
        assert LABEL_VALUE.fullmatch(value) and len(value) <= 63
    for volume in pod["spec"]["volumes"]:
        assert DNS1035.fullmatch(volume["name"]) and len(volume["name"]) <= 63
    # Deterministic: a second render (another process would do the same) gives the same names.
    again = render_children(load(tiny_job(name, resources={"nodes": 2, "gpusPerNode": 1})), OPTS, attempt)
    assert [c["metadata"]["name"] for c in again] == [c["metadata"]["name"] for c in children]


def test_child_names_are_readable_hashed_and_stable():
    # Valid names are kept as they are; others keep what fits, plus a hash of the owner's name. The
    # literal values pin the hash (sha256), so names cannot change between releases unnoticed.
    assert child_name("llama-sft", "trainer") == "llama-sft-trainer"
    assert child_name("llama.v2.sft", "trainer") == "llama-v2-sft-f7bfc552-trainer"
    assert child_name("7b.chat", "trainer").startswith("k7b-chat-")
    # Owners that differ only where the name had to change stay apart.
    assert child_name("a.b", "trainer") != child_name("a-b", "trainer")
    long = "y" * 253
    names = {child_name(long, f"trainer-{k}", 52) for k in range(1, 30)}
    assert len(names) == 29 and all(len(n) <= 52 for n in names)
    assert label_value("a" * 63) == "a" * 63
    assert len(label_value("a" * 64)) <= 63 and label_value("a" * 64) != label_value("a" * 65)
    assert (
        _volume_name("data.v1") == f"pvc-{short_hash('data.v1', 12)}" and _volume_name("data") == "pvc-data"
    )
