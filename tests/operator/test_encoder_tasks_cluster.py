"""masked-lm and question-answering FineTuneJobs on a real API server with the operator running: the trainer's
ConfigMap carries the task and its dataset settings, the Job runs, and status.result takes the task's kind."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.v1alpha1 import TrainerConfig
from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]  # its trainer pods must complete

CASES = [
    ("masked-lm", {"uri": "hf://Salesforce/wikitext", "config": "wikitext-2-raw-v1", "mlmProbability": 0.3}),
    ("question-answering", {"uri": "hf://rajpurkar/squad", "maxLength": 256, "docStride": 64}),
]


@pytest.mark.parametrize(("task", "dataset"), CASES, ids=[c[0] for c in CASES])
def test_encoder_task_reaches_the_trainer_and_its_result_kind_the_status(ftj: FTJ, task, dataset):
    name = f"enc-{task}"
    model = {"uri": "hf://google-bert/bert-base-uncased", "task": task}
    ftj.create(tiny_job(name, model=model, dataset=dataset, method={"type": "full"}))
    cm = wait_for(
        lambda: ftj.core.read_namespaced_config_map(f"{name}-trainer-config", ftj.ns),
        120,
        what="the ConfigMap",
    )
    spec = TrainerConfig.model_validate(yaml.safe_load(cm.data["config.yaml"])).job.spec
    assert spec.model.task == task
    if task == "masked-lm":
        assert spec.dataset.mlm_probability == 0.3
    else:
        assert (spec.dataset.max_length, spec.dataset.doc_stride) == (256, 64)
    ftj.wait_phase(name, "Succeeded", 120)
    # what the trainer writes at the end (status subresource): the API server takes the task's result kind
    ftj.co.patch_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", ftj.ns, "finetunejobs", name,
        {"status": {"result": {"kind": task, "uri": "s3://bucket/out", "metrics": {"train_loss": 1.5}}}},
    )  # fmt: skip
    assert ftj.status(name)["result"]["kind"] == task
