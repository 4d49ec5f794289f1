"""The rendered pods of oci:// results and sources: a trainer pod whose output is oci:// writes to its
checkpoint claim and reads the registry credentials from a mounted dockerconfigjson Secret (never env); a
serving pod pulls oci:// models and adapters (by URI or a FineTuneJob's pushed result) with the trainer's
client in an init container; the plain-HTTP registries come from the operator's settings."""

from __future__ import annotations

import yaml

from kubetune.api.v1alpha1 import FineTuneJob, ModelServe
from kubetune.reconcile import sources
from kubetune.render import finetunejob as ftj_render
from kubetune.render import modelserve as serve_render
from kubetune.settings import Settings

REGISTRY = "registry.example.com:5000"
DIGEST = "sha256:" + "ab" * 32
PLAIN = ("registry.example.com:5000",)


def oci_job(**output) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "capitals", "namespace": "team", "uid": "u-1"},
            "spec": {
                "model": {"uri": f"oci://{REGISTRY}/base/llama@{DIGEST}", "secretRef": {"name": "pull-creds"}},
                "dataset": {"uri": "pvc://data/capitals.jsonl"},
                "output": {"uri": f"oci://{REGISTRY}/team/capitals:v1", "checkpointUri": "pvc://models/capitals",
                           "secretRef": {"name": "push-creds"}, **output},
                "resources": {"gpusPerNode": 0},
            },
        }
    )  # fmt: skip


def test_a_trainer_pod_with_an_oci_output():
    job = oci_job()
    opts = ftj_render.RenderOptions(oci_plain_http=PLAIN)
    pod = ftj_render.render_job(job, opts)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    # Checkpoints and the result's copy on the checkpoint claim, mounted writable; the data claim read-only.
    assert mounts["/mnt/pvc/models"]["readOnly"] is False and mounts["/mnt/pvc/data"]["readOnly"] is True
    config = yaml.safe_load(ftj_render.render_configmap(job, opts)["data"]["config.yaml"])
    assert config["runtime"]["outputDir"] == "/mnt/pvc/models/capitals"
    assert config["runtime"]["outputUri"] == f"oci://{REGISTRY}/team/capitals:v1"
    assert config["runtime"]["checkpointUri"] == "pvc://models/capitals"

    # Both dockerconfigjson Secrets as files, each where its role's variable says.
    for role, secret in (("output", "push-creds"), ("model", "pull-creds")):
        volume = volumes[f"registry-{role}"]["secret"]
        assert volume == {
            "secretName": secret,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
        }
        assert mounts[f"/etc/kubetune/registry/{role}"]["readOnly"] is True
        assert (
            env[f"KUBETUNE_{role.upper()}_REGISTRY_AUTH"]["value"]
            == f"/etc/kubetune/registry/{role}/config.json"
        )
    assert env["KUBETUNE_OCI_PLAIN_HTTP"]["value"] == REGISTRY
    # ... and never as env: no HF_TOKEN or AWS_* drawn from them
    assert not any("secretKeyRef" in str(e.get("valueFrom")) for e in container["env"])

    # The operator checks the Secrets before it makes the Job: each must hold .dockerconfigjson.
    uses = {(u.field, u.name, u.required_keys) for u in ftj_render.secret_uses(job)}
    assert ("spec.output.secretRef", "push-creds", (".dockerconfigjson",)) in uses
    assert ("spec.model.secretRef", "pull-creds", (".dockerconfigjson",)) in uses


def test_an_s3_checkpoint_storage_gets_its_own_credentials_and_the_registry_its_own():
    job = oci_job(checkpointUri="s3://ckpt-bucket/capitals", checkpointSecretRef={"name": "s3-creds"},
                  register={"mlflow": {"trackingUri": "http://mlflow.mlflow:5000", "model": "capitals",
                                       "secretRef": {"name": "registry-creds"}}})  # fmt: skip
    pod = ftj_render.render_job(job, ftj_render.RenderOptions())["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["KUBETUNE_REGISTER_MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "registry-creds", "key": "MLFLOW_TRACKING_PASSWORD", "optional": True}  # fmt: skip
    assert "KUBETUNE_OCI_PLAIN_HTTP" not in env  # no plain-HTTP registry configured
    config = yaml.safe_load(
        ftj_render.render_configmap(job, ftj_render.RenderOptions())["data"]["config.yaml"]
    )
    assert config["runtime"]["outputDir"].startswith("/mnt/kubetune/work/")  # staged, mirrored to S3


def serve(spec: dict) -> ModelServe:
    return ModelServe.model_validate(
        {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelServe",
         "metadata": {"name": "bot", "namespace": "team", "uid": "s-1"}, "spec": spec}
    )  # fmt: skip


def test_a_serving_pod_pulls_oci_sources_in_init_containers():
    pushed = f"oci://{REGISTRY}/team/capitals:v1@{DIGEST}"
    job = oci_job().model_dump(by_alias=True, mode="json", exclude_none=True)
    job["status"] = {"phase": "Succeeded", "result": {"uri": pushed, "kind": "adapter", "digest": DIGEST}}
    ms = serve({
        "engine": "vllm",
        "model": {"uri": f"oci://{REGISTRY}/base/llama@{DIGEST}", "secretRef": {"name": "pull-creds"}},
        "adapters": [{"name": "capitals", "fineTuneJobRef": {"name": "capitals"}}],
        "resources": {"gpus": 0},
    })  # fmt: skip
    res = sources.resolve_sources(ms, {"capitals": job})
    assert res.ok, res.message
    template = serve_render.render_pod_template(
        ms, res, image="vllm:dev", trainer_image="trainer:dev", revision_hash_="r1", oci_plain_http=PLAIN
    )
    pod = template["spec"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    model, adapter = inits["pull-0"], inits["pull-1"]
    assert model["command"] == ["kubetune-trainer", "fetch", f"oci://{REGISTRY}/base/llama@{DIGEST}",
                                "/mnt/kubetune/models/model", "--field", "model.uri"]  # fmt: skip
    assert adapter["command"][2:5] == [pushed, "/mnt/kubetune/models/adapter-capitals", "--field"]
    assert adapter["command"][5] == "adapters[0].uri"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for init, secret in (
        (model, "pull-creds"),
        (adapter, "push-creds"),
    ):  # the job's own Secret pulls its result
        (mount,) = [m for m in init["volumeMounts"] if m["name"].startswith("registry-")]
        assert volumes[mount["name"]]["secret"]["secretName"] == secret
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["KUBETUNE_MODEL_REGISTRY_AUTH"] == f"{mount['mountPath']}/config.json"
        assert env["KUBETUNE_OCI_PLAIN_HTTP"] == REGISTRY
        assert init["securityContext"]["runAsNonRoot"] is True
    # The server reads what the init containers pulled.
    args = " ".join(pod["containers"][0]["args"])
    assert "/mnt/kubetune/models/model" in args and "capitals=/mnt/kubetune/models/adapter-capitals" in args
    # A new pushed result is a new digest: a new revision (its pods pull it at start).
    other = {**job, "status": {**job["status"], "result": {**job["status"]["result"],
                                                            "uri": pushed.replace("ab" * 32, "cd" * 32)}}}  # fmt: skip
    again = sources.resolve_sources(ms, {"capitals": other})
    assert serve_render.revision_hash(ms, again, "vllm:dev") != serve_render.revision_hash(
        ms, res, "vllm:dev"
    )


def test_the_plain_http_registries_are_an_operator_setting(monkeypatch):
    monkeypatch.setenv("KUBETUNE_OCI_PLAIN_HTTP_REGISTRIES", "registry.local:5000, 10.0.0.5:5000")
    assert Settings().oci_plain_http_registries == ["registry.local:5000", "10.0.0.5:5000"]
