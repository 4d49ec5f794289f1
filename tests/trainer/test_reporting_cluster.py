"""Reporting against a real API server, with the identity a trainer pod has: a ServiceAccount token
(TokenRequest API) whose Role allows get/patch on finetunejobs/status of exactly one FineTuneJob."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.v1alpha1 import TrainerConfig
from kubetune_trainer import reporting
from kubetune_trainer.reporting import StatusWriter, make_callbacks
from tests.support.cluster import kubeconfig_ca_and_server, token_client
from tests.support.crds import apply_crds
from tests.trainer.test_reporting import tiny_training

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"


def finetunejob(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://org/tiny-llama"},
            "dataset": {"uri": "hf://org/data"},
            "output": {"uri": f"pvc://models/{name}"},
        },
    }


def trainer_identity(api, namespace: str, job: str, tmp_path: Path, kubeconfig: str) -> tuple[str, Path]:
    """SA + Role(get/patch finetunejobs/status, resourceNames=[job]) + RoleBinding; a token; a kubeconfig."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    sa = f"{job}-trainer"
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa))
    )
    rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name=sa),
        rules=[client.V1PolicyRule(api_groups=[GROUP], resources=["finetunejobs/status"],
                                   resource_names=[job], verbs=["get", "patch"])],
    ))  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=sa),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=sa),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=namespace)],
    ))  # fmt: skip
    token = core.create_namespaced_service_account_token(
        sa,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    ).status.token
    server, ca = kubeconfig_ca_and_server(kubeconfig)
    cluster: dict = {"server": server}
    if ca is not None:
        (tmp_path / "ca.crt").write_bytes(ca)
        cluster["certificate-authority"] = str(tmp_path / "ca.crt")
    path = tmp_path / "trainer-kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "trainer",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "trainer", "context": {"cluster": "c", "user": sa, "namespace": namespace}}],
    }))  # fmt: skip
    return token, path


def config_for(obj: dict, tmp_path: Path, uid: str | None = None) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "job": {**obj, "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"]}},
        "runtime": {"runId": "r1", "outputDir": str(tmp_path / "out"), "reportStatus": True,
                    "metricsPort": None, "uid": uid or obj["metadata"]["uid"]},
    })  # fmt: skip


def test_trainer_reports_to_its_own_finetunejob_only(kube, namespace, tmp_path, monkeypatch):
    from kubernetes import client

    apply_crds(kube.api)
    custom = client.CustomObjectsApi(kube.api)
    mine = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, finetunejob("mine"))
    other = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, finetunejob("other"))
    token, trainer_kubeconfig = trainer_identity(kube.api, namespace, "mine", tmp_path, kube.kubeconfig)

    # The trainer, as in its pod: only the SA's identity, reporting on.
    monkeypatch.setenv("KUBECONFIG", str(trainer_kubeconfig))
    monkeypatch.setenv("KUBETUNE_REPORT_INTERVAL", "0")
    config = config_for(mine, tmp_path)
    callbacks = make_callbacks(config)
    tiny_training(tmp_path, callbacks, steps=6, logging_steps=2)
    reporting.report_checkpoint(config, "pvc://models/mine/checkpoints/checkpoint-6", 6)
    reporting.report_result(config, {"uri": "pvc://models/mine", "kind": "full", "configHash": "abc",
                                     "metrics": {"train_loss": 3.5, "eval_loss": 3.4}})  # fmt: skip
    writer = callbacks[0].writer
    assert writer.failures == 0 and writer.patches >= 4  # begin, logs at 2/4/6, end

    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "mine")["status"]
    progress = status["progress"]
    assert (progress["step"], progress["totalSteps"], progress["percent"]) == (6, 6, 100.0)
    assert progress["loss"] > 0 and progress["evalLoss"] > 0 and progress["tokensPerSecond"] > 0
    assert progress["epoch"] > 0 and progress["learningRate"] >= 0 and progress["etaSeconds"] == 0
    assert progress["updatedAt"].endswith("Z")
    assert status["checkpoint"]["uri"] == "pvc://models/mine/checkpoints/checkpoint-6"
    assert status["checkpoint"]["step"] == 6 and status["checkpoint"]["savedAt"]
    result = status["result"]
    assert (result["uri"], result["kind"], result["configHash"]) == ("pvc://models/mine", "full", "abc")
    assert result["metrics"] == {"train_loss": 3.5, "eval_loss": 3.4}
    # The spec is untouched (the status subresource only).
    assert (
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "mine")["spec"] == mine["spec"]
    )

    # Another FineTuneJob's status is out of reach: the same code fails (logged), the API says 403.
    other_writer = StatusWriter(config_for(other, tmp_path))
    assert other_writer.patch({"progress": {"step": 99}}) is False and other_writer.failures == 1
    trainer_api = client.CustomObjectsApi(token_client(kube, token, tmp_path))
    with pytest.raises(client.ApiException) as denied:
        trainer_api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "other", {"status": {"progress": {"step": 99}}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
    assert denied.value.status == 403
    with pytest.raises(client.ApiException) as denied_spec:  # nor its own spec
        trainer_api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "mine", {"spec": {"suspend": True}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
    assert denied_spec.value.status == 403
    assert "progress" not in (
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "other").get("status") or {}
    )

    # A FineTuneJob of the same name but another uid (deleted and re-created) is not patched.
    stale = StatusWriter(config_for(mine, tmp_path, uid="00000000-0000-0000-0000-000000000000"))
    assert stale.patch({"progress": {"step": 1}}) is False
    assert (
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "mine")["status"]["progress"][
            "step"
        ]
        == 6
    )
