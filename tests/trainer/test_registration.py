"""output.register.mlflow against a real MLflow server on loopback (sqlite store): a local training run pushes
its result to a real registry (oci://) and the promoted result becomes a model version whose source is the
pushed artifact, pinned by its digest, and whose tags carry the lineage and the metrics, linked to the run
that tracked it; a retried run finds its version instead of adding one; a result
that failed its evaluation gate is not registered; an unreachable server is a RegistrationFailed that keeps
the result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubetune.api.v1alpha1.publishing import RegisterSpec
from kubetune_trainer import oci, publish, registration
from kubetune_trainer.train import run_training
from tests.support.mlflow_server import MLflowServer
from tests.support.oci_registry import OCIRegistry
from tests.support.ports import free_port

from .toy import job_config

pytestmark = pytest.mark.trainer
MODEL = "capitals-lora"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MLflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture
def clean_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TAGS", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):  # fmt: skip
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = OCIRegistry(tmp_path_factory.mktemp("registry")).start()  # no accounts: anyone may push
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registered(assets, datasets_dir, mlflow_server, registry, tmp_path_factory):
    """One real local run pushed to oci://, tracked by and registered in the same MLflow server."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TAGS", oci.ENV_PLAIN_HTTP)
    saved = {k: os.environ.get(k) for k in names}
    os.environ[oci.ENV_PLAIN_HTTP] = registry.host
    config = job_config(
        tmp_path_factory.mktemp("run"), assets["llama"], datasets_dir / "capitals.jsonl", name="capitals",
        dataset={"evalFraction": 0.2}, training={"maxSteps": 12, "learningRate": 5e-3, "batchSize": 8,
                                                  "metrics": ["perplexity"]},
        tracking={"mlflow": {"trackingUri": mlflow_server.uri, "experiment": "kubetune-registry"}},
        output={"uri": f"oci://{registry.host}/kubetune/capitals:v1", "register": {"mlflow": {"model": MODEL}}},
    )  # fmt: skip
    try:
        result = run_training(config).result
        yield config, result
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_a_promoted_result_becomes_a_model_version_with_its_lineage(registered, mlflow_server, registry):
    from mlflow.tracking import MlflowClient

    config, result = registered
    assert "publishError" not in result
    assert result["registeredModel"] == {"name": MODEL, "version": "1", "trackingUri": mlflow_server.uri}
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    version = client.get_model_version(MODEL, "1")
    assert version.source == result["uri"] == f"oci://{registry.host}/kubetune/capitals:v1@{result['digest']}"

    tags = version.tags
    lineage = json.loads((Path(config.runtime.output_dir) / "lineage.json").read_text())
    assert tags["kubetune.finetunejob"] == "capitals"
    assert tags["kubetune.run_id"] == tags["kubetune.config_hash"] == config.runtime.run_id
    assert tags["kubetune.dataset"] == config.job.spec.dataset.uri
    assert tags["kubetune.dataset.digest"] == result["datasetDigest"] == lineage["dataset"]["digest"]
    assert tags["kubetune.base_model"] == config.job.spec.model.uri
    assert tags["kubetune.result.kind"] == "adapter"
    assert tags["kubetune.result.digest"] == result["digest"]
    assert tags["kubetune.result.storage_uri"] == f"file://{config.runtime.output_dir}"
    assert tags["kubetune.promoted"] == "true"
    assert float(tags["metric.eval_perplexity"]) == pytest.approx(result["metrics"]["eval_perplexity"])
    assert float(tags["metric.train_loss"]) == pytest.approx(result["metrics"]["train_loss"])

    # Linked to the run that tracked the training on the same server.
    experiment = client.get_experiment_by_name("kubetune-registry")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`kubetune.run_id` = '{config.runtime.run_id}'"
    )
    assert version.run_id == run.info.run_id
    # publication.json beside lineage.json on the storage records the version
    publication = json.loads((Path(config.runtime.output_dir) / "publication.json").read_text())
    assert publication["registration"] == result["registeredModel"]


def test_a_retried_run_finds_its_version(registered, mlflow_server, clean_mlflow_env):
    from mlflow.tracking import MlflowClient

    config, result = registered
    again = publish.publish(config, {k: v for k, v in result.items() if k != "registeredModel"})
    assert again["registeredModel"]["version"] == "1"
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]


def test_a_result_that_failed_its_gate_is_not_registered(registered, mlflow_server, clean_mlflow_env):
    from mlflow.tracking import MlflowClient

    config, result = registered
    target = config.runtime.output_uri.replace(":v1", ":gate-failed")
    runtime = config.runtime.model_copy(update={"run_id": "gate-failed", "output_uri": target})
    other = config.model_copy(update={"runtime": runtime})
    storage = f"file://{config.runtime.output_dir}"
    kept = publish.publish(
        other, {**result, "uri": storage, "digest": None, "promoted": False, "registeredModel": None}
    )
    assert kept["uri"] == kept["storageUri"] == storage  # neither pushed nor registered: it stays where it is
    assert not kept.get("registeredModel") and "publishError" not in kept
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    assert client.search_model_versions(f"name = '{MODEL}' and tags.`kubetune.run_id` = 'gate-failed'") == []


def test_an_unreachable_registry_is_a_registration_failure_that_keeps_the_result(
    registered, clean_mlflow_env
):
    config, result = registered
    down = f"http://127.0.0.1:{free_port()}"
    mlflow = config.job.spec.output.registration.mlflow.model_copy(update={"tracking_uri": down})
    output = config.job.spec.output.model_copy(update={"registration": RegisterSpec(mlflow=mlflow)})
    spec = config.job.spec.model_copy(update={"output": output})
    broken = config.model_copy(update={"job": config.job.model_copy(update={"spec": spec})})
    assert registration.tracking_uri(broken) == down
    failed = publish.publish(broken, {k: v for k, v in result.items() if k != "registeredModel"})
    assert failed["publishError"]["reason"] == "RegistrationFailed"
    assert down in failed["publishError"]["message"] and result["uri"] in failed["publishError"]["message"]
    assert failed["uri"] == result["uri"]


def test_the_registry_credentials_stand_in_for_the_tracking_ones():
    environ = {"MLFLOW_TRACKING_USERNAME": "tracker", "MLFLOW_TRACKING_PASSWORD": "t-pass",
               "KUBETUNE_REGISTER_MLFLOW_TRACKING_TOKEN": "registry-token"}  # fmt: skip
    with registration.registry_credentials(environ):
        assert environ.get("MLFLOW_TRACKING_TOKEN") == "registry-token"
        assert "MLFLOW_TRACKING_USERNAME" not in environ and "MLFLOW_TRACKING_PASSWORD" not in environ
    assert environ == {"MLFLOW_TRACKING_USERNAME": "tracker", "MLFLOW_TRACKING_PASSWORD": "t-pass",
                       "KUBETUNE_REGISTER_MLFLOW_TRACKING_TOKEN": "registry-token"}  # fmt: skip
    plain = {"MLFLOW_TRACKING_USERNAME": "tracker"}
    with registration.registry_credentials(plain):  # no Secret of its own: the tracking server's
        assert plain["MLFLOW_TRACKING_USERNAME"] == "tracker"
    assert plain == {"MLFLOW_TRACKING_USERNAME": "tracker"}
