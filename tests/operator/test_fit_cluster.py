"""The fit check on the control plane: the operator reads the model's config.json (here from a Hugging Face
cache it is given, HF_HUB_OFFLINE) and the kwok GPU nodes' nvidia.com/gpu.memory label (81559 MiB); a job
that cannot fit never gets a Job and says why with the numbers; skipFitCheck starts it; one that fits starts
with its estimate in status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.operator.conftest import FTJ, Operator, tiny_job
from tests.support.waiting import wait_for
from tests.unit.test_fit import LLAMA_8B

pytestmark = [pytest.mark.cluster]

REPO_ID = "kubetune-test/llama-8b"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path) -> Path:
    """A Hugging Face hub cache holding only REPO_ID's config.json (the layout huggingface_hub reads)."""
    repo = root / f"models--{REPO_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA_8B))
    return root


@pytest.fixture(scope="module")
def fit_operator(kube, crds, tmp_path_factory):
    cache = hub_cache(tmp_path_factory.mktemp("hub-cache"))
    op = Operator(kube.kubeconfig, tmp_path_factory.mktemp("fit-operator"), namespaces="fit-*",
                  HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")  # fmt: skip
    op.start()
    yield op
    op.stop()


@pytest.fixture
def ftj(kube, fit_operator) -> FTJ:
    namespace = kube.new_namespace("fit")
    yield FTJ(kube, namespace)
    kube.delete_namespace(namespace)


def full_8b(name: str, **resources) -> dict:
    return tiny_job(name, model={"uri": f"hf://{REPO_ID}"}, method={"type": "full"},
                    dataset={"uri": "hf://wikitext", "format": "text", "maxLength": 2048},
                    training={"maxSteps": 10, "batchSize": 4},
                    resources={"nodes": 1, "gpusPerNode": 1, **resources})  # fmt: skip


def test_a_job_that_cannot_fit_never_gets_a_job_and_skip_fit_check_starts_it(ftj, fit_operator):
    ftj.create(full_8b("big"))
    validated = wait_for(lambda: (c := ftj.cond("big", "Validated")).get("reason") == "DoesNotFit" and c, 30,
                         what="Validated=False DoesNotFit")  # fmt: skip
    assert validated["status"] == "False"
    message = validated["message"]
    assert (
        message.startswith("does not fit: needs ~")
        and " GiB per GPU (weights 29.92, gradients 29.92, " in message
    )
    assert "79.65 GiB available (node kwok-gpu-" in message and "'s nvidia.com/gpu.memory): use " in message
    status = ftj.status("big")
    estimate = status["estimate"]
    assert estimate["fits"] is False and estimate["availableGiB"] == 79.65 and estimate["perGpuGiB"] > 120
    assert estimate["modelType"] == "llama" and estimate["params"] == 8_030_261_248
    assert status["phase"] == "Pending" and status.get("jobName") is None
    stalled = ftj.cond("big", "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "DoesNotFit")
    assert any(e.reason == "DoesNotFit" and e.type == "Warning" for e in ftj.events("big"))
    # The operator retries a job that cannot fit with backoff: after its next look, still no Job.
    looked = fit_operator.reconciles("FineTuneJob", ftj.ns, "big")
    fit_operator.wait_reconciled("FineTuneJob", ftj.ns, "big", after=looked)
    assert ftj.jobs("big") == []

    ftj.patch("big", {"spec": {"resources": {"skipFitCheck": True}}})
    job = wait_for(lambda: ftj.jobs("big"), 30, what="the trainer Job after skipFitCheck")
    assert [j.metadata.name for j in job] == ["big-trainer"]
    after = wait_for(lambda: (s := ftj.status("big")).get("estimate", {}).get("message", "").endswith(
        "(resources.skipFitCheck: started anyway)") and s, 30, what="the estimate of the new run")  # fmt: skip
    assert after["estimate"]["fits"] is False
    assert ftj.cond("big", "Validated")["status"] == "True"


def test_a_job_that_fits_starts_with_its_estimate(ftj):
    ftj.create(tiny_job("lora", model={"uri": f"hf://{REPO_ID}"},
                        dataset={"uri": "hf://wikitext", "format": "text", "maxLength": 1024},
                        training={"maxSteps": 10, "batchSize": 2, "gradientCheckpointing": True}))  # fmt: skip
    wait_for(lambda: ftj.jobs("lora"), 30, what="the trainer Job")
    estimate = wait_for(lambda: ftj.status("lora").get("estimate"), 10, what="status.estimate")
    assert estimate["fits"] is True and 15 < estimate["perGpuGiB"] < 79.65
    assert estimate["message"].startswith("needs ~") and "79.65 GiB available" in estimate["message"]


def test_a_model_the_operator_does_not_read_is_not_estimated_and_starts(ftj):
    ftj.create(tiny_job("s3", model={"uri": "s3://models-bucket/llama"}))
    wait_for(lambda: ftj.jobs("s3"), 30, what="the trainer Job")
    estimate = wait_for(lambda: ftj.status("s3").get("estimate"), 10, what="status.estimate")
    assert estimate["message"].startswith(
        "not estimated: s3://models-bucket/llama: the operator does not mount"
    )
