"""A minimal manifest gets the API's defaults (docs/api-reference.md)."""

from __future__ import annotations

from kubetune.api.v1alpha1 import FineTuneJob, ModelServe, validate_document

from .helpers import finetunejob, modelserve


def test_minimal_finetunejob_gets_api_md_defaults():
    result = validate_document(finetunejob())
    assert result.ok, result.problems
    job = result.obj
    assert isinstance(job, FineTuneJob)
    spec = job.to_dict()["spec"]
    assert spec["model"] == {
        "uri": "hf://openai-community/gpt2",
        "revision": "main",
        "task": "causal-lm",
        "trustRemoteCode": False,
    }
    dataset = spec["dataset"]
    assert dataset["format"] == "auto" and dataset["columns"] == {} and dataset["trainSplit"] == "train"
    assert dataset["evalFraction"] == 0.0 and "evalSplit" not in dataset and "maxSamples" not in dataset
    assert (
        dataset["maxLength"],
        dataset["targetMaxLength"],
        dataset["sourcePrefix"],
        dataset["packing"],
    ) == (512, 128, "", False)
    method = spec["method"]
    assert method["type"] == "lora"
    assert method["lora"] == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "targetModules": "all-linear",
        "bias": "none",
    }
    assert method["quantization"] == {
        "bits": 4,
        "type": "nf4",
        "doubleQuant": True,
        "computeDtype": "bfloat16",
    }
    assert method["prefixTuning"] == {"numVirtualTokens": 20}
    assert method["promptTuning"] == {"numVirtualTokens": 20}
    assert method["headOnly"] == {"trainable": ["classifier"], "unfreezeLastLayers": 0}
    assert spec["objective"] == {
        "type": "sft",
        "dpo": {"beta": 0.1},
        "kto": {"beta": 0.1, "desirableWeight": 1.0, "undesirableWeight": 1.0},
        "reward": {},
        "rl": {
            "rewards": [],
            "numGenerations": 8,
            "maxCompletionLength": 256,
            "temperature": 1.0,
            "beta": 0.0,
        },
    }
    training = spec["training"]
    expected = {
        "epochs": 3, "learningRate": 2.0e-5, "batchSize": 8, "gradientAccumulationSteps": 1, "scheduler": "linear",
        "warmupRatio": 0.0, "weightDecay": 0.0, "optimizer": "adamw", "maxGradNorm": 1.0, "precision": "auto",
        "gradientCheckpointing": False, "seed": 42, "evalEvery": "epoch", "metrics": [], "extraArgs": {},
        "stallTimeoutSeconds": 1800,
    }  # fmt: skip
    assert training == expected
    resources = spec["resources"]
    assert (resources["nodes"], resources["gpusPerNode"], resources["gpuResource"]) == (
        1,
        1,
        "nvidia.com/gpu",
    )
    assert (
        resources["sharedMemory"] == "8Gi"
        and resources["nodeSelector"] == {}
        and resources["tolerations"] == []
    )
    assert spec["distributed"] == {"strategy": "auto", "deepspeedStage": 2}
    assert spec["checkpoints"] == {"everySteps": 500, "keepLast": 2}
    assert spec["output"] == {"uri": "pvc://models/out", "mergeAdapter": False, "overwriteTag": False}
    assert spec["imagePullSecrets"] == [] and spec["env"] == []
    assert spec["suspend"] is False and spec["backoffLimit"] == 3
    for unset in (
        "image",
        "queueName",
        "activeDeadlineSeconds",
        "pendingDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ):
        assert unset not in spec


def test_minimal_modelserve_gets_api_md_defaults():
    result = validate_document(modelserve())
    assert result.ok, result.problems
    assert isinstance(result.obj, ModelServe)
    spec = result.obj.to_dict()["spec"]
    assert spec["engine"] == "tgi" and spec["adapters"] == [] and spec["replicas"] == 1
    assert spec["resources"] == {
        "gpus": 1,
        "gpuResource": "nvidia.com/gpu",
        "sharedMemory": "1Gi",
        "nodeSelector": {},
        "tolerations": [],
    }
    assert spec["tgi"] == {"extraArgs": []}
    rollout = spec["rollout"]
    assert (rollout["maxSurge"], rollout["maxUnavailable"], rollout["progressDeadlineSeconds"]) == (
        1,
        0,
        1200,
    )
    assert rollout["smokeTest"] == {"enabled": True, "prompt": "Hello", "maxNewTokens": 8}
    assert rollout["autoRollback"] is True
    assert spec["service"] == {"type": "ClusterIP", "port": 80}


def test_secret_ref_key_defaults_to_hf_token():
    doc = finetunejob(model={"uri": "hf://meta-llama/Llama-3.1-8B", "secretRef": {"name": "hf"}})
    result = validate_document(doc)
    assert result.ok, result.problems
    assert result.obj.spec.model.secret_ref.key == "HF_TOKEN"


def test_status_defaults_are_empty_progress():
    doc = finetunejob()
    doc["status"] = {"phase": "Running"}
    job = validate_document(doc).obj
    assert job.status.progress.percent == 0.0 and job.status.attempts == 0 and job.status.result.metrics == {}
