"""A job created through the API trains for real and its result is listed as a model once a ModelServe
serves it.

The operator (`kubetune operator`, watching gwt-* namespaces) makes the trainer Job from the FineTuneJob the
gateway created; kwok's fake pod does not run code, so the trainer runs here, in this process, from the
ConfigMap the operator rendered, with a token of the ServiceAccount the operator made for it (the pod's
identity: it may patch that FineTuneJob's status and nothing else). PersistentVolumeClaims are folders (the
``claims`` fixture): the gateway's files volume is the claim kubetune-files the pod would mount. The
ModelServe's status comes from the same operator, whose smoke test calls a TGI-protocol server on loopback
serving the tiny base model and the adapter this job trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.api.v1alpha1 import TrainerConfig, pvc_local_path
from kubetune.api.v1alpha1 import trainerconfig as trainerconfig_module
from kubetune.render.finetunejob import configmap_name, serviceaccount_name
from tests.gateway.conftest import make_team
from tests.gateway.helpers import (
    GROUP,
    VERSION,
    chat_lines,
    service_account_token,
    token_kubeconfig,
)
from tests.support.cluster import kubeconfig_ca_and_server
from tests.support.operator import Operator
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok, pytest.mark.slow, pytest.mark.trainer]
TRAIN_NS = "gwt"


@pytest.fixture(scope="module")
def tiny_base(claims) -> Path:
    """A tiny random-weight Llama and a tokenizer (with a chat template) trained on the data's words, on the
    claim "models" as pvc://models/tiny."""
    from kubetune_trainer import tiny

    root = claims / "models" / "tiny"
    words = [line.decode() for line in chat_lines(4).splitlines()] * 4
    tokenizer = tiny.build_tokenizer(words, root, vocab_size=200)
    tiny.build_model("llama", tokenizer, root)
    return root


@pytest.mark.timeout(900)
def test_a_job_made_through_the_api_trains_and_its_result_is_listed_once_served(
    kube, gateway, claims, tiny_base, tmp_path, monkeypatch
):
    from kubernetes import client

    from kubetune_trainer.train import run
    from tests.support.tgi_server import TGIServer, wait_healthy

    tgi_port = free_port()
    operator = Operator(
        kube.kubeconfig, tmp_path / "operator", namespaces=f"{TRAIN_NS}-*",
        KUBETUNE_SERVE_ENDPOINT_OVERRIDE=f"http://127.0.0.1:{tgi_port}", KUBETUNE_REQUEUE_SECONDS="1",
        HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",  # the smoke test talks to the loopback server
    )  # fmt: skip
    operator.start()
    team = make_team(kube, gateway, TRAIN_NS)
    tgi = None
    try:
        for claim in (
            "kubetune-files",
            "kubetune-models",
            "models",
        ):  # the claims the job names (kwok binds them)
            client.CoreV1Api(kube.api).create_namespaced_persistent_volume_claim(team.namespace, {
                "metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            })  # fmt: skip
        sdk = team.client()
        data = sdk.files.create(file=("capitals.jsonl", chat_lines(16)), purpose="fine-tune")
        job = sdk.fine_tuning.jobs.create(
            model="tiny", training_file=data.id, suffix="capitals",
            method={"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 50}}},
        )  # fmt: skip
        ns = team.namespace
        core = client.CoreV1Api(kube.api)
        co = client.CustomObjectsApi(kube.api)
        # The operator made the trainer's config and identity.
        cm = wait_for(
            lambda: core.read_namespaced_config_map(configmap_name(job.id), ns), 60, 0.2, "the ConfigMap"
        )
        config = TrainerConfig.model_validate(yaml.safe_load(cm.data["config.yaml"]))
        assert config.job.spec.dataset.uri == f"pvc://kubetune-files/{ns}/jobs/{job.id}"
        token = service_account_token(kube.api, ns, serviceaccount_name(job.id))

        # The pod, here: its claims mounted at CLAIMS, its ServiceAccount's token, reporting on.
        monkeypatch.setattr(trainerconfig_module, "PVC_MOUNT_ROOT", str(claims))
        monkeypatch.setenv(
            "KUBECONFIG",
            str(
                token_kubeconfig(
                    *kubeconfig_ca_and_server(kube.kubeconfig), token, tmp_path / "trainer-kubeconfig"
                )
            ),
        )
        monkeypatch.setenv("KUBETUNE_REPORT_INTERVAL", "0")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.setenv(name, "1")
        output_dir = pvc_local_path(config.job.spec.output.uri or "")
        runtime = config.runtime.model_copy(update={"output_dir": output_dir, "metrics_port": None})
        result = run(config.model_copy(update={"runtime": runtime}))
        assert result["kind"] == "adapter" and result["uri"].startswith(f"pvc://kubetune-models/{job.id}")

        def succeeded():
            obj = co.get_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", job.id)
            return obj if (obj.get("status") or {}).get("phase") == "Succeeded" else None

        try:
            done = wait_for(succeeded, 120, 0.5, "the FineTuneJob Succeeded")
        except AssertionError:
            status = co.get_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", job.id).get("status")
            raise AssertionError(
                f"not Succeeded: {json.dumps(status)[:3000]}\n{operator.log_tail(40)}"
            ) from None
        assert done["status"]["result"]["uri"] == result["uri"]
        retrieved = sdk.fine_tuning.jobs.retrieve(job.id)
        assert retrieved.status == "succeeded" and retrieved.finished_at and retrieved.error is None
        assert retrieved.trained_tokens and retrieved.trained_tokens > 0
        assert retrieved.fine_tuned_model is None  # nothing serves it yet
        events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
        metrics = [e for e in events if e.type == "metrics"]
        assert metrics and metrics[0].data["step"] == 6 and metrics[0].data["train_loss"] > 0
        reasons = {(e.data or {}).get("reason") for e in events}
        assert "JobCreated" in reasons, [e.message for e in events]
        (checkpoint,) = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
        assert checkpoint.step_number == 6 and checkpoint.fine_tuned_model_checkpoint.startswith(
            "pvc://kubetune-models/"
        )
        assert list(sdk.models.list()) == []

        # Serve it: the tiny base plus this job's adapter, on the loopback TGI-protocol server.
        tgi = TGIServer(tiny_base, {"capitals": pvc_local_path(result["uri"])}, port=tgi_port).start()
        wait_healthy(tgi.url)
        co.create_namespaced_custom_object(GROUP, VERSION, ns, "modelserves", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServe", "metadata": {"name": "geo"},
            "spec": {"model": {"uri": "pvc://models/tiny"},
                     "adapters": [{"name": "capitals", "fineTuneJobRef": {"name": job.id}}],
                     "rollout": {"smokeTest": {"prompt": "capital of France?", "maxNewTokens": 4}}},
        })  # fmt: skip
        wait_for(
            lambda: (co.get_namespaced_custom_object(GROUP, VERSION, ns, "modelserves", "geo").get("status") or {})
            .get("phase") == "Ready",
            120, 0.5, f"the ModelServe Ready; operator log:\n{operator.log_tail(40)}",
        )  # fmt: skip
        served = {m.id: m for m in sdk.models.list()}
        assert set(served) == {"geo", "capitals"}
        assert served["capitals"].model_extra["fine_tuning_job"] == job.id
        assert served["capitals"].model_extra["base_url"] == f"http://geo.{ns}.svc:80/v1"
        assert sdk.models.retrieve("capitals").id == "capitals"
        assert sdk.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == "capitals"
        # The operator's smoke test generated with this job's adapter.
        assert any(r["parameters"].get("adapter_id") == "capitals" for r in tgi.requests), tgi.requests
    finally:
        if tgi is not None:
            tgi.stop()
        operator.stop()
        kube.drop_pods(team.namespace)
        kube.delete_namespace(team.namespace)
