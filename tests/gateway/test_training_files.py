"""What the gateway stores for the trainer trains: a chat file (supervised) and a DPO file, each uploaded in
OpenAI's format, kept in the trainer's format by the file store, linked into a job's folder and trained on
CPU by the trainer the pods run, through the FineTuneJob the gateway's mapping makes (no cluster)."""

from __future__ import annotations

import io
import json

import pytest

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.api.v1alpha1 import trainerconfig as trainerconfig_module
from kubetune.gateway import create
from kubetune.gateway.settings import GatewaySettings
from kubetune.gateway.store import FileStore
from tests.gateway.helpers import JOB_DEFAULTS, chat_lines

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")]


def dpo_lines() -> bytes:
    rows = [{"input": {"messages": [{"role": "user", "content": f"capital of {c}?"}]},
             "preferred_output": [{"role": "assistant", "content": k}],
             "non_preferred_output": [{"role": "assistant", "content": "unknown"}]} for c, k in PAIRS * 4]  # fmt: skip
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.mark.parametrize(("data", "method"), [(chat_lines(16), "supervised"), (dpo_lines(), "dpo")])
def test_uploaded_files_train_with_the_trainer(tmp_path, monkeypatch, data, method):
    from kubetune_trainer import tiny
    from kubetune_trainer.config import local_config
    from kubetune_trainer.train import run_training

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    # Claims are folders under tmp_path, as a pod mounts them under /mnt/pvc.
    monkeypatch.setattr(trainerconfig_module, "PVC_MOUNT_ROOT", str(tmp_path))
    words = [line.decode() for line in (chat_lines(4) + dpo_lines()).splitlines()]
    base = tmp_path / "models" / "tiny"
    tiny.build_model("llama", tiny.build_tokenizer(words, base, vocab_size=200), base)

    store = FileStore(tmp_path / "kubetune-files")
    meta = store.add("team-a", "train.jsonl", "fine-tune", io.BytesIO(data))
    request = create.parse_request({"model": "tiny", "training_file": meta["id"], "method": {"type": method}})
    store.link_job_data("team-a", "ftjob-1", {create.TRAIN_SPLIT: meta["id"]})
    settings = GatewaySettings(base_models={"tiny": "pvc://models/tiny"}, job_defaults=JOB_DEFAULTS)
    manifest = create.finetunejob(
        request, name="ftjob-1", namespace="team-a", user="alice", model=create.resolve_model("tiny", settings.base_models),
        file_kind=meta["kubetune"]["kind"], dataset_uri="pvc://kubetune-files/team-a/jobs/ftjob-1", has_validation=False, settings=settings,
        seed=1, idempotency_key=None,
    )  # fmt: skip
    manifest["spec"]["output"] = {"uri": f"file://{tmp_path / 'out'}"}
    manifest["spec"]["training"]["maxSteps"] = 3
    job = FineTuneJob.model_validate(manifest, context={"target": "local"})
    outcome = run_training(local_config(job, str(tmp_path / "out")))
    assert outcome.result["kind"] == "adapter"
    assert outcome.data.format == meta["kubetune"]["format"] and outcome.data.rows == 16
    assert outcome.metrics["train_loss"] > 0
