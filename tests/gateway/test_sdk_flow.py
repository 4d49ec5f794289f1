"""The OpenAI SDK against the gateway on the real API server: files, jobs, events, cancel/pause/resume.

No operator watches these namespaces: each FineTuneJob stays as the gateway made it, so what is asserted is
the gateway's own mapping, read back from the API server."""

from __future__ import annotations

import json
import os

import openai
import pytest

from kubetune.gateway import create
from tests.gateway.helpers import GROUP, VERSION, chat_lines, list_finetunejobs

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def custom(kube):
    from kubernetes import client

    return client.CustomObjectsApi(kube.api)


def test_upload_create_list_retrieve_events_and_cancel(kube, team, claims):
    sdk = team.client()
    data = chat_lines(8)
    uploaded = sdk.files.create(file=("capitals.jsonl", data), purpose="fine-tune")
    assert (uploaded.object, uploaded.purpose, uploaded.status, uploaded.filename, uploaded.bytes) == (
        "file", "fine-tune", "processed", "capitals.jsonl", len(data))  # fmt: skip
    held_out = sdk.files.create(file=("held-out.jsonl", chat_lines(4)), purpose="fine-tune")
    assert sdk.files.retrieve(uploaded.id).id == uploaded.id
    assert sdk.files.content(uploaded.id).read() == data
    assert {f.id for f in sdk.files.list()} == {uploaded.id, held_out.id}

    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        validation_file=held_out.id,
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 3}}},
        suffix="capitals",
        seed=7,
        metadata={"team": "geo"},
    )  # fmt: skip
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert (job.model, job.training_file, job.validation_file, job.seed) == (
        "tiny",
        uploaded.id,
        held_out.id,
        7,
    )
    assert job.status == "validating_files" and job.fine_tuned_model is None
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == 3 and job.method.type == "supervised"
    assert job.user_provided_suffix == "capitals" and job.metadata == {"team": "geo"}
    assert job.organization_id == team.namespace

    # The FineTuneJob, as the API server holds it.
    obj = custom(kube).get_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", job.id)
    spec = obj["spec"]
    assert spec["model"]["uri"] == "pvc://models/tiny"
    assert spec["dataset"]["uri"] == f"pvc://kubetune-files/{team.namespace}/jobs/{job.id}"
    assert (spec["dataset"]["format"], spec["dataset"]["trainSplit"], spec["dataset"]["evalSplit"]) == (
        "messages", "train", "validation")  # fmt: skip
    assert spec["training"]["epochs"] == 2 and spec["training"]["learningRate"] == pytest.approx(3e-4)
    assert (
        spec["output"]["uri"] == f"pvc://kubetune-models/{job.id}" and spec["resources"]["gpusPerNode"] == 0
    )
    assert obj["metadata"]["annotations"][create.ANN_USER] == team.user
    assert obj["metadata"]["labels"][create.LABEL_TRAINING_FILE] == uploaded.id
    # The job's data, where its pods read it: the training form of both files.
    folder = claims / "kubetune-files" / team.namespace / "jobs" / job.id
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert len(train) == 8 and train[0]["messages"][2] == {"role": "assistant", "content": "Paris"}
    assert len((folder / "validation.jsonl").read_text().splitlines()) == 4

    # More jobs, then pages of two: newest first, has_more, and the SDK's auto-paging over `after`.
    more = [sdk.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, metadata={"n": str(i)})
            for i in range(3)]  # fmt: skip
    first = sdk.fine_tuning.jobs.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    every = [j.id for j in sdk.fine_tuning.jobs.list(limit=2)]
    assert sorted(every) == sorted([job.id, *(j.id for j in more)]) and len(every) == 4
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"n": "1"})] == [more[1].id]

    assert sdk.fine_tuning.jobs.retrieve(job.id).id == job.id
    events = list(sdk.fine_tuning.jobs.list_events(job.id))
    assert [e.message for e in events] == [f"Created fine-tuning job: {job.id}"]
    assert list(sdk.fine_tuning.jobs.checkpoints.list(job.id)) == []

    # Pause and resume toggle spec.suspend; cancel suspends for good and says so.
    paused = sdk.fine_tuning.jobs.pause(more[0].id)
    assert paused.status in ("paused", "validating_files")
    assert custom(kube).get_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", more[0].id)[
        "spec"]["suspend"] is True  # fmt: skip
    sdk.fine_tuning.jobs.resume(more[0].id)
    assert custom(kube).get_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", more[0].id)[
        "spec"]["suspend"] is False  # fmt: skip
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    obj = custom(kube).get_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", job.id)
    assert obj["spec"]["suspend"] is True and obj["metadata"]["annotations"][create.ANN_CANCELLED]
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # again: the same answer
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        sdk.fine_tuning.jobs.resume(job.id)
    assert any(e.message == "The job was cancelled" for e in sdk.fine_tuning.jobs.list_events(job.id))

    # Deleting a file leaves the jobs that use it as they are (their data is linked into the job's folder).
    assert sdk.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(uploaded.id)
    assert len((folder / "train.jsonl").read_text().splitlines()) == 8
    with pytest.raises(openai.BadRequestError) as gone:
        sdk.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    assert gone.value.body["param"] == "training_file"
    assert len(list_finetunejobs(kube, team.namespace)) == 4


def test_dpo_files_and_refusals_name_what_to_change(kube, team, claims):
    sdk = team.client()
    pairs = b"".join(
        json.dumps({"input": {"messages": [{"role": "user", "content": f"capital of {c}?"}]},
                    "preferred_output": [{"role": "assistant", "content": k}],
                    "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}).encode() + b"\n"
        for c, k in [("France", "Paris"), ("Japan", "Tokyo")] * 3
    )  # fmt: skip
    preference = sdk.files.create(file=("pairs.jsonl", pairs), purpose="fine-tune")
    chats = sdk.files.create(file=("chats.jsonl", chat_lines(4)), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model="tiny", training_file=preference.id,
                                      method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})  # fmt: skip
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    spec = custom(kube).get_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", job.id)[
        "spec"
    ]
    assert (spec["objective"]["type"], spec["objective"]["dpo"]["beta"]) == ("dpo", 0.2)
    assert spec["dataset"]["format"] == "preference"
    row = json.loads(
        (claims / "kubetune-files" / team.namespace / "jobs" / job.id / "train.jsonl")
        .read_text()
        .splitlines()[0]
    )
    assert row == {"prompt": [{"role": "user", "content": "capital of France?"}],
                   "chosen": [{"role": "assistant", "content": "Paris"}],
                   "rejected": [{"role": "assistant", "content": "No idea."}]}  # fmt: skip

    refusals = [
        ({"model": "tiny", "training_file": chats.id, "method": {"type": "dpo"}}, "training_file"),
        ({"model": "tiny", "training_file": preference.id}, "training_file"),
        (
            {
                "model": "tiny",
                "training_file": chats.id,
                "method": {"type": "reinforcement", "reinforcement": {}},
            },
            "method.type",
        ),  # fmt: skip
        ({"model": "gpt-4o-mini:2024_07_18", "training_file": chats.id}, "model"),
        ({"model": "ftjob-000000000000000000000000", "training_file": chats.id}, None),
        (
            {
                "model": "tiny",
                "training_file": chats.id,
                "hyperparameters": {"learning_rate_multiplier": 20000},
            },
            "hyperparameters.learning_rate_multiplier",
        ),  # fmt: skip
        (
            {
                "model": "tiny",
                "training_file": chats.id,
                "integrations": [{"type": "wandb", "wandb": {"project": "p"}}],
            },
            "integrations",
        ),  # fmt: skip
    ]
    for body, param in refusals:
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as refused:
            sdk.fine_tuning.jobs.create(**body)
        assert refused.value.body["param"] == param, (body, refused.value.body)
    assert len(list_finetunejobs(kube, team.namespace)) == 1  # only the DPO job


def test_a_job_can_start_from_another_jobs_result(kube, team):
    sdk = team.client()
    data = sdk.files.create(file=("a.jsonl", chat_lines(4)), purpose="fine-tune")
    first = sdk.fine_tuning.jobs.create(model="tiny", training_file=data.id)
    second = sdk.fine_tuning.jobs.create(model=first.id, training_file=data.id)
    spec = custom(kube).get_namespaced_custom_object(
        GROUP, VERSION, team.namespace, "finetunejobs", second.id
    )["spec"]
    assert spec["model"]["fineTuneJobRef"] == {"name": first.id} and "uri" not in spec["model"]
    assert second.model == first.id


def test_file_checks_name_the_line_and_the_field_and_big_files_get_413(kube, team, claims):
    sdk = team.client()
    bad = (
        chat_lines(3)
        + b'{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n'
    )
    with pytest.raises(openai.BadRequestError) as error:
        sdk.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert error.value.status_code == 400
    assert "bad.jsonl: line 4: messages[1].role: must be one of" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="line 2: not valid JSON"):
        sdk.files.create(file=("bad.jsonl", chat_lines(1) + b"{oops\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        sdk.files.create(file=("x.jsonl", chat_lines(1)), purpose="batch")
    big = chat_lines(4000)
    assert len(big) > 256 * 1024
    with pytest.raises(openai.APIStatusError) as too_big:
        sdk.files.create(file=("big.jsonl", big), purpose="fine-tune")
    assert too_big.value.status_code == 413 and too_big.value.body["code"] == "file_too_large"
    # Nothing of the refused uploads stays on the volume.
    folder = claims / "kubetune-files" / team.namespace
    assert not folder.exists() or sorted(os.listdir(folder)) == []


def test_the_sdk_example_runs_against_the_gateway(kube, team):
    """examples/openai_sdk_finetune.py, configured through the SDK's own environment variables."""
    import subprocess
    import sys

    from tests.gateway.helpers import REPO

    env = dict(os.environ, OPENAI_BASE_URL=f"{team.gateway.url}/v1", OPENAI_API_KEY=team.token,
               OPENAI_PROJECT_ID=team.namespace)  # fmt: skip
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "openai_sdk_finetune.py"), "--model", "tiny"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (job,) = list_finetunejobs(kube, team.namespace)
    assert f"created {job['metadata']['name']}: validating_files" in proc.stdout
    assert job["metadata"]["annotations"][create.ANN_SUFFIX] == "capitals"
    assert job["spec"]["training"]["epochs"] == 3
