"""Rendered TGI Deployment/Service/PDB of a ModelServe, source resolution and UnsupportedByEngine."""

from __future__ import annotations

import copy

import pytest

from kubetune.api.v1alpha1 import FineTuneJob, ModelServe
from kubetune.reconcile import sources
from kubetune.render import modelserve as r

TGI = "ghcr.io/huggingface/text-generation-inference:3.3.4"
TRAINER = "ghcr.io/kubetune/kubetune-trainer:0.1.0"
UID = "0000-1111"


def serve(spec: dict, name: str = "bot", namespace: str = "team") -> ModelServe:
    return ModelServe.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "ModelServe",
            "metadata": {"name": name, "namespace": namespace, "uid": UID},
            "spec": spec,
        }
    )


def job(
    name: str,
    *,
    method: str = "lora",
    task: str = "causal-lm",
    result: dict | None = None,
    phase: str | None = "Succeeded",
    output: str = "pvc://models/out",
    base: str = "hf://org/base",
    secret: str | None = None,
) -> dict:
    spec: dict = {
        "model": {"uri": base, "task": task, **({"numLabels": 2} if "classification" in task else {})},
        "dataset": {"uri": "hf://org/data"},
        "method": {"type": method},
        "output": {"uri": output, **({"secretRef": {"name": secret}} if secret else {})},
    }
    status: dict = {"phase": phase} if phase else {}
    if result is not None:
        status["result"] = result
        status["kopf"] = {"progress": {}}  # unknown status keys must not break parsing
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}-0123456789"},
        "spec": spec,
        "status": status,
    }


def pod_of(ms: ModelServe, jobs: dict | None = None) -> tuple[dict, sources.Resolution, str]:
    res = sources.resolve_sources(ms, jobs or {})
    assert res.ok, res.message
    rev = r.revision_hash(ms, res, TGI)
    tpl = r.render_pod_template(ms, res, image=TGI, trainer_image=TRAINER, revision_hash_=rev)
    return tpl, res, rev


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_hub_model_deployment_and_service():
    ms = serve(
        {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "replicas": 1,
            "resources": {
                "gpus": 2,
                "cpu": "8",
                "memory": "64Gi",
                "sharedMemory": "2Gi",
                "nodeSelector": {"gpu": "h100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "tgi": {
                "quantize": "bitsandbytes-nf4",
                "numShard": 2,
                "dtype": "bfloat16",
                "maxInputTokens": 4096,
                "maxTotalTokens": 8192,
                "extraArgs": ["--sharded", "true"],
            },
            "rollout": {"maxSurge": 1, "maxUnavailable": 0, "progressDeadlineSeconds": 1800},
            "service": {"type": "NodePort", "port": 8000},
        }
    )
    tpl, _, rev = pod_of(ms)
    dep = r.render_deployment(ms, UID, tpl)
    assert dep["metadata"]["name"] == "bot" and dep["metadata"]["namespace"] == "team"
    assert dep["metadata"]["ownerReferences"][0] == {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelServe",
        "name": "bot",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert spec["progressDeadlineSeconds"] == 1800
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["template"]["metadata"]["labels"][r.LABEL_REVISION] == rev
    assert spec["template"]["metadata"]["annotations"][r.ANNOTATION_REVISION] == rev
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == TGI
    env = env_of(c)
    assert env["MODEL_ID"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "LORA_ADAPTERS" not in env
    args = c["args"]
    for flag, value in [
        ("--quantize", "bitsandbytes-nf4"),
        ("--num-shard", "2"),
        ("--dtype", "bfloat16"),
        ("--max-input-tokens", "4096"),
        ("--max-total-tokens", "8192"),
    ]:
        assert args[args.index(flag) + 1] == value
    assert args[-2:] == ["--sharded", "true"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 2, "cpu": "8", "memory": "64Gi"}
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 2
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # Probes on /health; the startup probe covers the whole progress deadline.
    start = c["startupProbe"]
    assert start["httpGet"]["path"] == "/health"
    assert start["periodSeconds"] * start["failureThreshold"] >= 1800
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120  # gentle
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert env["PORT"] == "8080"

    svc = r.render_service(ms, UID)
    assert svc["metadata"]["name"] == "bot"
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert r.endpoint(ms) == "http://bot.team.svc:8000"
    assert r.endpoint(ms, "http://127.0.0.1:{port}/") == "http://127.0.0.1:8000"
    assert r.endpoint(ms, "http://{service}.{namespace}.example:9") == "http://bot.team.example:9"
    assert not r.wants_pdb(ms)


def test_pdb_only_with_more_than_one_replica():
    ms = serve({"model": {"uri": "hf://gpt2"}, "replicas": 3})
    assert r.wants_pdb(ms)
    pdb = r.render_pdb(ms, UID)
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == r.selector_labels(ms)


def test_no_gpus_no_gpu_limit():
    ms = serve({"model": {"uri": "hf://gpt2"}, "resources": {"gpus": 0}})
    tpl, _, _ = pod_of(ms)
    assert "resources" not in tpl["spec"]["containers"][0]


def test_merged_result_from_job_ref_on_pvc():
    ms = serve({"model": {"fineTuneJobRef": {"name": "sft"}}})
    jobs = {
        "sft": job(
            "sft",
            result={
                "uri": "pvc://models/sft/adapter",
                "kind": "adapter",
                "mergedUri": "pvc://models/sft/adapter/merged",
                "configHash": "abc123",
            },
        )
    }
    tpl, res, _ = pod_of(ms, jobs)
    c = tpl["spec"]["containers"][0]
    assert env_of(c)["MODEL_ID"] == "/mnt/pvc/models/sft/adapter/merged"
    vol = next(v for v in tpl["spec"]["volumes"] if "persistentVolumeClaim" in v)
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in c["volumeMounts"] if m["name"] == vol["name"])
    assert mount == {"name": vol["name"], "mountPath": "/mnt/pvc/models", "readOnly": True}
    assert res.sources == ["FineTuneJob/sft@abc123#uid-sft-"]


def test_full_result_on_s3_downloads_with_init_container_and_job_secret():
    ms = serve({"model": {"fineTuneJobRef": {"name": "full"}}})
    jobs = {
        "full": job(
            "full",
            method="full",
            output="s3://bucket/runs/full",
            secret="s3-creds",
            result={"uri": "s3://bucket/runs/full", "kind": "full", "configHash": "f00"},
        )
    }
    tpl, _, _ = pod_of(ms, jobs)
    pod = tpl["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == TRAINER
    assert init["command"][-2:] == ["s3://bucket/runs/full", "/mnt/kubetune/models/model"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert env_of(pod["containers"][0])["MODEL_ID"] == "/mnt/kubetune/models/model"
    assert {"name": "models", "emptyDir": {}} in pod["volumes"]


def test_private_sources_by_uri_use_their_secret():
    """A private Hub model gets HF_TOKEN from its Secret; an s3:// adapter downloads with its credentials."""
    ms = serve(
        {
            "model": {"uri": "hf://org/private-base", "secretRef": {"name": "hub", "key": "token"}},
            "adapters": [{"name": "tone", "uri": "s3://bucket/adapters/tone", "secretRef": {"name": "s3"}}],
        }
    )
    tpl, _, _ = pod_of(ms)
    pod = tpl["spec"]
    (container,) = pod["containers"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}} in container[
        "env"
    ]
    (init,) = pod["initContainers"]
    assert init["command"][-2:] == ["s3://bucket/adapters/tone", "/mnt/kubetune/models/adapter-tone"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3"}}]
    public, _, _ = pod_of(serve({"model": {"uri": "hf://org/base"}}))
    assert "HF_TOKEN" not in env_of(public["spec"]["containers"][0])


def test_secret_ref_goes_with_uri_only():
    from kubetune.api.v1alpha1 import validate_document

    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelServe",
        "metadata": {"name": "bot"},
        "spec": {"model": {"fineTuneJobRef": {"name": "j"}, "secretRef": {"name": "hub"}}},
    }
    problems = validate_document(doc).problems
    assert [str(p) for p in problems] == [
        "spec.model.secretRef: goes with uri; a fineTuneJobRef uses the job's own secrets"
    ]


def test_adapters_by_uri_and_by_job_ref():
    ms = serve(
        {
            "model": {"uri": "hf://org/base"},
            "adapters": [
                {"name": "support", "fineTuneJobRef": {"name": "lora"}},
                {"name": "sql", "uri": "pvc://adapters/sql"},
                {"name": "legal", "uri": "s3://bucket/legal"},
            ],
        }
    )
    jobs = {"lora": job("lora", result={"uri": "pvc://models/lora", "kind": "adapter", "configHash": "c1"})}
    tpl, res, _ = pod_of(ms, jobs)
    pod = tpl["spec"]
    env = env_of(pod["containers"][0])
    assert env["MODEL_ID"] == "org/base"
    assert env["LORA_ADAPTERS"] == (
        "support=/mnt/pvc/models/lora,sql=/mnt/pvc/adapters/sql,legal=/mnt/kubetune/models/adapter-legal"
    )
    claims = sorted(
        v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    )
    assert claims == ["adapters", "models"]
    assert [i["command"][-1] for i in pod["initContainers"]] == ["/mnt/kubetune/models/adapter-legal"]
    rev = r.revision(ms, res, TGI)
    assert rev.model == "hf://org/base"
    assert rev.adapters == ["support=pvc://models/lora", "sql=pvc://adapters/sql", "legal=s3://bucket/legal"]
    assert rev.sources == ["FineTuneJob/lora@c1#uid-lora"]


def test_revision_follows_results_settings_and_image_only():
    ms = serve({"model": {"fineTuneJobRef": {"name": "sft"}}})
    done = job("sft", method="full", result={"uri": "pvc://models/sft", "kind": "full", "configHash": "h1"})
    h1 = r.revision_hash(ms, sources.resolve_sources(ms, {"sft": done}), TGI)
    assert h1 == r.revision_hash(ms, sources.resolve_sources(ms, {"sft": copy.deepcopy(done)}), TGI)  # stable
    rerun = copy.deepcopy(done)
    rerun["status"]["result"]["configHash"] = "h2"  # a new run wrote a new result to the same place
    assert r.revision_hash(ms, sources.resolve_sources(ms, {"sft": rerun}), TGI) != h1
    assert r.revision_hash(ms, sources.resolve_sources(ms, {"sft": done}), TGI + "-next") != h1
    tuned = serve({"model": {"fineTuneJobRef": {"name": "sft"}}, "tgi": {"maxTotalTokens": 2048}})
    assert r.revision_hash(tuned, sources.resolve_sources(tuned, {"sft": done}), TGI) != h1
    scaled = serve({"model": {"fineTuneJobRef": {"name": "sft"}}, "replicas": 4})
    assert r.revision_hash(scaled, sources.resolve_sources(scaled, {"sft": done}), TGI) == h1


@pytest.mark.parametrize(
    ("spec", "jobs", "needle"),
    [
        (
            {"model": {"fineTuneJobRef": {"name": "cls"}}},
            {
                "cls": job(
                    "cls",
                    method="full",
                    task="sequence-classification",
                    result={"uri": "pvc://m/cls", "kind": "full"},
                )
            },
            "TGI serves only text generation",
        ),
        (
            {"model": {"fineTuneJobRef": {"name": "mlm"}}},
            {
                "mlm": job(
                    "mlm",
                    task="masked-lm",
                    result={"uri": "pvc://m/mlm", "kind": "adapter", "mergedUri": "pvc://m/mlm/merged"},
                )
            },
            "trains a masked-lm model (fill-mask, not text generation)",
        ),
        (
            {
                "model": {"uri": "hf://org/base"},
                "adapters": [{"name": "m", "fineTuneJobRef": {"name": "mlm"}}],
            },
            {"mlm": job("mlm", task="masked-lm", result={"uri": "pvc://m/mlm", "kind": "adapter"})},
            "use its result as the base of a sequence- or token-classification FineTuneJob",
        ),
        (
            {"model": {"fineTuneJobRef": {"name": "qa"}}},
            {
                "qa": job(
                    "qa",
                    method="full",
                    task="question-answering",
                    result={"uri": "pvc://m/qa", "kind": "question-answering"},
                )
            },
            "extractive question-answering model",
        ),
        (
            {"model": {"fineTuneJobRef": {"name": "rm"}}},
            {
                "rm": job(
                    "rm",
                    method="full",
                    task="causal-lm",
                    result={"uri": "pvc://m/rm", "kind": "reward-model"},
                )
            },
            "produced a reward-model model",
        ),
        (
            {"model": {"fineTuneJobRef": {"name": "pre"}}},
            {"pre": job("pre", method="prefix-tuning", result={"uri": "pvc://m/pre", "kind": "prefix"})},
            "train with method lora",
        ),
        (
            {
                "model": {"uri": "hf://org/base"},
                "adapters": [{"name": "p", "fineTuneJobRef": {"name": "pt"}}],
            },
            {"pt": job("pt", method="prompt-tuning", result={"uri": "pvc://m/pt", "kind": "prompt"})},
            "train with method lora or qlora",
        ),
        (
            {"model": {"fineTuneJobRef": {"name": "lora"}}},
            {"lora": job("lora", result={"uri": "pvc://m/lora", "kind": "adapter"})},
            "set spec.output.mergeAdapter: true",
        ),
        (
            {
                "model": {"uri": "hf://org/base"},
                "adapters": [{"name": "f", "fineTuneJobRef": {"name": "full"}}],
            },
            {"full": job("full", method="full", result={"uri": "pvc://m/full", "kind": "full"})},
            "serve it under model.fineTuneJobRef",
        ),
        (
            {
                "model": {"uri": "hf://org/base"},
                "adapters": [{"name": "i", "fineTuneJobRef": {"name": "ia3"}}],
            },
            {"ia3": job("ia3", method="ia3", result={"uri": "pvc://m/ia3", "kind": "adapter"})},
            "TGI loads only LoRA adapters",
        ),
        (
            {
                "model": {"uri": "hf://org/other"},
                "adapters": [{"name": "a", "fineTuneJobRef": {"name": "lora"}}],
            },
            {"lora": job("lora", result={"uri": "pvc://m/lora", "kind": "adapter"})},
            "serve model.uri: hf://org/base",
        ),
    ],
    ids=[
        "classifier",
        "masked-lm-merged",
        "masked-lm-adapter",
        "question-answering",
        "reward-model",
        "prefix-model",
        "prompt-adapter",
        "unmerged-adapter-as-model",
        "full-as-adapter",
        "ia3",
        "adapter-of-other-base",
    ],
)
def test_unsupported_by_engine(spec, jobs, needle):
    res = sources.resolve_sources(serve(spec), jobs)
    assert not res.ok
    assert res.reason == sources.REASON_UNSUPPORTED
    assert needle in res.message


@pytest.mark.parametrize(
    ("jobs", "needle"),
    [
        ({}, "does not exist"),
        (
            {"sft": job("sft", method="full", phase="Running")},
            "waiting for FineTuneJob 'sft' to succeed (phase Running)",
        ),
        ({"sft": job("sft", method="full", phase="Failed")}, "failed and has no result"),
    ],
    ids=["missing", "running", "failed"],
)
def test_waiting_for_a_result(jobs, needle):
    res = sources.resolve_sources(serve({"model": {"fineTuneJobRef": {"name": "sft"}}}), jobs)
    assert not res.ok and res.reason == sources.REASON_WAITING
    assert needle in res.message


def test_running_job_with_an_earlier_result_keeps_serving_it():
    running = job("sft", method="full", phase="Running", result={"uri": "pvc://m/sft", "kind": "full"})
    assert sources.resolve_sources(serve({"model": {"fineTuneJobRef": {"name": "sft"}}}), {"sft": running}).ok


def test_job_objects_and_dicts_resolve_alike():
    raw = job("sft", method="full", result={"uri": "pvc://m/sft", "kind": "full", "configHash": "x"})
    raw["status"].pop("kopf")
    ms = serve({"model": {"fineTuneJobRef": {"name": "sft"}}})
    from_dict = sources.resolve_sources(ms, {"sft": raw})
    from_model = sources.resolve_sources(ms, {"sft": FineTuneJob.model_validate(raw)})
    assert from_dict.model == from_model.model


def test_long_names_fit_and_referenced_jobs():
    ms = serve(
        {
            "model": {"fineTuneJobRef": {"name": "a"}},
            "adapters": [
                {"name": "x", "fineTuneJobRef": {"name": "b"}},
                {"name": "y", "fineTuneJobRef": {"name": "a"}},
                {"name": "z", "uri": "hf://org/z"},
            ],
        },
        name="n" * 120,
    )
    assert len(r.deployment_name(ms)) <= 63 and len(r.service_name(ms)) <= 63
    assert sources.referenced_jobs(ms) == ["a", "b"]
    assert sources.referenced_jobs({"spec": ms.spec.to_dict()}) == ["a", "b"]
    digit = serve({"model": {"uri": "hf://gpt2"}}, name="1st.serve")
    assert r.service_name(digit)[0].isalpha() and "." not in r.service_name(digit)


def test_template_revision_roundtrip():
    ms = serve({"model": {"uri": "hf://gpt2"}})
    tpl, _, rev = pod_of(ms)
    assert r.template_revision(tpl) == rev
    dep = r.render_deployment(ms, UID, tpl, annotations={r.ANNOTATION_FAILED_REVISION: "bad"})
    assert dep["metadata"]["annotations"] == {r.ANNOTATION_FAILED_REVISION: "bad"}
    assert r.template_revision(dep["spec"]["template"]) == rev


VLLM = "vllm/vllm-openai:v0.33.0"


def test_vllm_pod_from_spec_vllm():
    ms = serve(
        {
            "engine": "vllm",
            "model": {"uri": "hf://org/base", "secretRef": {"name": "hf"}},
            "adapters": [{"name": "a", "fineTuneJobRef": {"name": "ja"}}, {"name": "b", "uri": "s3://bkt/b"}],
            "resources": {"gpus": 4, "sharedMemory": "4Gi"},
            "vllm": {"dtype": "bfloat16", "maxModelLen": 4096, "gpuMemoryUtilization": 0.85, "quantization": "awq",
                     "enforceEager": True, "maxLoras": 2, "maxCpuLoras": 8, "extraArgs": ["--seed", "1"]},
        }
    )  # fmt: skip
    jobs = {"ja": job("ja", result={"uri": "pvc://models/ja/c1", "kind": "adapter", "configHash": "c1"})}
    jobs["ja"]["spec"]["method"]["lora"] = {"r": 32}
    res = sources.resolve_sources(ms, jobs)
    assert res.ok, res.message
    rev = r.revision_hash(ms, res, VLLM)
    tpl = r.render_pod_template(ms, res, image=VLLM, trainer_image=TRAINER, revision_hash_=rev)
    (c,) = tpl["spec"]["containers"]
    assert c["name"] == "vllm" and c["command"] == ["vllm", "serve"] and c["image"] == VLLM
    args = c["args"]

    def flag(name: str) -> str:
        return args[args.index(name) + 1]

    assert args[0] == "org/base" and flag("--served-model-name") == "bot" and flag("--port") == "8000"
    assert flag("--tensor-parallel-size") == "4"  # defaults to the pod's GPUs
    assert (
        flag("--dtype"),
        flag("--max-model-len"),
        flag("--gpu-memory-utilization"),
        flag("--quantization"),
    ) == ("bfloat16", "4096", "0.85", "awq")
    assert "--enforce-eager" in args and "--enable-lora" in args
    assert flag("--max-lora-rank") == "64"  # a (r=32) and b (by URI: 64 assumed) -> 64
    assert (flag("--max-loras"), flag("--max-cpu-loras")) == ("2", "8") and args[-2:] == ["--seed", "1"]
    lora = args[args.index("--lora-modules") + 1 : args.index("--lora-modules") + 3]
    assert lora == ["a=/mnt/pvc/models/ja/c1", "b=/mnt/kubetune/models/adapter-b"]
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}
    assert (
        c["startupProbe"]["httpGet"]["path"] == "/health"
        and c["readinessProbe"]["httpGet"]["path"] == "/health"
    )
    assert c["ports"][0]["containerPort"] == 8000
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in tpl["spec"]["volumes"]
    assert [i["command"][:2] for i in tpl["spec"]["initContainers"]] == [
        ["kubetune-trainer", "fetch"]
    ]  # b from S3
    # A new result of a pvc:// adapter on the same claim is not a new revision (it loads live) ...
    jobs2 = {"ja": job("ja", result={"uri": "pvc://models/ja/c2", "kind": "adapter", "configHash": "c2"})}
    jobs2["ja"]["spec"]["method"]["lora"] = {"r": 32}
    assert r.revision_hash(ms, sources.resolve_sources(ms, jobs2), VLLM) == rev
    # ... a higher rank than the pods started with is.
    jobs2["ja"]["spec"]["method"]["lora"] = {"r": 128}
    assert r.revision_hash(ms, sources.resolve_sources(ms, jobs2), VLLM) != rev
    # The first set stays in the template when the decision passes the live one.
    again = r.render_pod_template(ms, sources.resolve_sources(ms, jobs2), image=VLLM, trainer_image=TRAINER,
                                  revision_hash_=rev, lora_modules=lora)  # fmt: skip
    assert (
        again["spec"]["containers"][0]["args"][args.index("--lora-modules") + 1] == "a=/mnt/pvc/models/ja/c1"
    )


@pytest.mark.parametrize(
    ("method", "task", "kind", "needle"),
    [
        ("full", "sequence-classification", "full", "vLLM serves only text generation"),
        ("ia3", "causal-lm", "adapter", "vLLM loads only LoRA adapters"),
    ],
)
def test_vllm_unsupported_by_engine(method, task, kind, needle):
    spec = {"engine": "vllm", "model": {"fineTuneJobRef": {"name": "j"}}}
    if method == "ia3":
        spec = {
            "engine": "vllm",
            "model": {"uri": "hf://org/base"},
            "adapters": [{"name": "x", "fineTuneJobRef": {"name": "j"}}],
        }
    jobs = {
        "j": job("j", method=method, task=task, result={"uri": "pvc://m/j", "kind": kind, "configHash": "h"})
    }
    res = sources.resolve_sources(serve(spec), jobs)
    assert res.reason == "UnsupportedByEngine" and needle in res.message, res.message
