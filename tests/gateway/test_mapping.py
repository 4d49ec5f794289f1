"""The gateway's pure parts: training-file checks, a create request -> FineTuneJob, FineTuneJob -> OpenAI's
objects (no cluster, no HTTP)."""

from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1 import validate_document
from kubetune.gateway import create, views
from kubetune.gateway.auth import Caller, access_review, target_namespace
from kubetune.gateway.errors import ApiError
from kubetune.gateway.settings import GatewaySettings
from kubetune.gateway.training_files import TrainingFile, TrainingFileError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
DPO = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "hello"}],
    "non_preferred_output": [{"role": "assistant", "content": "go away"}],
}


def rows(*lines: object) -> TrainingFile:
    checker = TrainingFile()
    for line in lines:
        checker.row(line if isinstance(line, str) else json.dumps(line))
    checker.finish()
    return checker


def test_chat_preference_and_prompt_completion_files_become_the_trainers_rows():
    checker = TrainingFile()
    dev = {"messages": [{"role": "developer", "content": "be brief"}, *CHAT["messages"]]}
    assert checker.row(json.dumps(dev)) == {
        "messages": [{"role": "system", "content": "be brief"}, *CHAT["messages"]]
    }
    assert checker.row("   ") is None  # a blank line is skipped
    assert (checker.kind, checker.examples, checker.dataset_format) == ("chat", 1, "messages")
    pref = TrainingFile()
    assert pref.row(json.dumps(DPO)) == {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    assert pref.dataset_format == "preference"
    assert rows({"prompt": "a", "completion": " b"}).dataset_format == "prompt-completion"


@pytest.mark.parametrize(
    ("lines", "line", "field", "words"),
    [
        (["{not json"], 1, "", "not valid JSON"),
        ([CHAT, [1, 2]], 2, "", "must be a JSON object"),
        ([CHAT, {"messages": [{"role": "robot", "content": "x"}]}], 2, "messages[0].role", "must be one of"),
        ([{"messages": [{"role": "user", "content": "x"}]}], 1, "messages", "at least one assistant"),
        (
            [{"messages": [{"role": "user", "content": [{"type": "text"}]}, CHAT["messages"][1]]}],
            1,
            "messages[0].content",
            "must be a string",
        ),  # fmt: skip
        (
            [{"messages": [{"role": "assistant", "content": "x", "weight": 0}]}],
            1,
            "messages[0].weight",
            "not supported",
        ),
        ([{"messages": CHAT["messages"], "tools": [{"type": "function"}]}], 1, "tools", "not supported"),
        ([{"messages": CHAT["messages"], "extra": 1}], 1, "extra", "unknown field"),
        ([CHAT, DPO], 2, "", "one format per file"),
        (
            [{**DPO, "preferred_output": [{"role": "assistant", "content": "a"}] * 2}],
            1,
            "preferred_output",
            "exactly one",
        ),
        (
            [{k: v for k, v in DPO.items() if k != "non_preferred_output"}],
            1,
            "non_preferred_output",
            "missing",
        ),
        ([{"prompt": "a", "completion": 3}], 1, "completion", "must be a string"),
        ([{"hello": "world"}], 1, "", "has none of messages"),
        ([], 1, "", "no examples"),
    ],
)
def test_a_bad_line_is_named_with_its_field(lines, line, field, words):
    with pytest.raises(TrainingFileError) as error:
        rows(*lines)
    assert (error.value.line, error.value.field) == (line, field)
    assert words in error.value.message
    assert str(error.value).startswith(f"line {line}")


def test_invalid_utf8_names_the_line():
    checker = TrainingFile()
    checker.row(json.dumps(CHAT))
    with pytest.raises(TrainingFileError, match="line 2: not UTF-8"):
        checker.row(b"\xff\xfe")


SETTINGS = GatewaySettings(
    base_models={"tiny": "pvc://models/tiny"},
    job_defaults={"resources": {"gpusPerNode": 0}, "training": {"maxSteps": 5, "epochs": 1}},
    files_uri="pvc://kubetune-files/{namespace}",
)


def build(body: dict, kind: str = "chat", validation: bool = False, key: str | None = "k1") -> dict:
    request = create.parse_request(body)
    name = create.job_name("team-a", "alice", key)
    return create.finetunejob(
        request, name=name, namespace="team-a", user="alice",
        model=create.resolve_model(request.model, SETTINGS.base_models), file_kind=kind,
        dataset_uri=f"pvc://kubetune-files/team-a/jobs/{name}", has_validation=validation, settings=SETTINGS,
        seed=request.seed if request.seed is not None else 7, idempotency_key=key,
    )  # fmt: skip


def test_a_supervised_request_maps_field_by_field_and_is_a_valid_finetunejob():
    body = {
        "model": "tiny", "training_file": "file-" + "a" * 24, "validation_file": "file-" + "b" * 24,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}}},
        "suffix": "support", "seed": 11, "metadata": {"team": "support"},
    }  # fmt: skip
    manifest = build(body, validation=True)
    spec = manifest["spec"]
    assert spec["model"] == {"uri": "pvc://models/tiny"}
    assert spec["dataset"] == {"uri": f"pvc://kubetune-files/team-a/jobs/{manifest['metadata']['name']}",
                               "format": "messages", "trainSplit": "train", "evalSplit": "validation"}  # fmt: skip
    assert spec["objective"] == {"type": "sft"}
    assert spec["training"] == {"maxSteps": 5, "epochs": 2, "batchSize": 4, "learningRate": 2e-4, "seed": 11}
    assert spec["resources"] == {"gpusPerNode": 0}  # from the gateway's job defaults
    assert spec["output"] == {"uri": f"pvc://kubetune-models/{manifest['metadata']['name']}"}
    ann = manifest["metadata"]["annotations"]
    assert ann[create.ANN_SUFFIX] == "support" and json.loads(ann[create.ANN_METADATA]) == {"team": "support"}
    assert manifest["metadata"]["labels"][create.LABEL_TRAINING_FILE] == body["training_file"]
    assert validate_document(manifest).ok
    # The job object reads it back as OpenAI shows it.
    obj = {**manifest, "metadata": {**manifest["metadata"], "creationTimestamp": "2026-01-02T03:04:05Z"}}
    job = views.job_object(obj, fine_tuned_model=None, base_learning_rate=SETTINGS.base_learning_rate)
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}
    assert (job["model"], job["seed"], job["user_provided_suffix"], job["metadata"]) == (
        "tiny",
        11,
        "support",
        {"team": "support"},
    )
    assert (job["status"], job["created_at"], job["organization_id"]) == (
        "validating_files",
        1767323045,
        "team-a",
    )


def test_dpo_sets_the_objective_and_a_wrong_file_kind_is_refused():
    body = {"model": "org/base", "training_file": "file-" + "a" * 24,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}}  # fmt: skip
    manifest = build(body, kind="preference")
    assert manifest["spec"]["objective"] == {"type": "dpo", "dpo": {"beta": 0.3}}
    assert manifest["spec"]["model"] == {"uri": "hf://org/base"}
    assert manifest["spec"]["dataset"]["format"] == "preference"
    with pytest.raises(ApiError) as error:
        build(body, kind="chat")
    assert (error.value.status, error.value.param) == (400, "training_file")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"training_file": "f"}, "model", "Field required"),
        ({"model": "tiny", "training_file": "f", "learning_rate": 1}, "learning_rate", "Unrecognized"),
        (
            {"model": "tiny", "training_file": "f", "method": {"type": "reinforcement"}},
            "method.type",
            "graders",
        ),
        (
            {"model": "tiny", "training_file": "f", "integrations": [{"type": "wandb"}]},
            "integrations",
            "spec.tracking",
        ),
        ({"model": "tiny", "training_file": "f", "suffix": "x" * 65}, "suffix", "at most 64"),
        (
            {"model": "tiny", "training_file": "f", "metadata": {str(i): "v" for i in range(17)}},
            "metadata",
            "at most 16",
        ),
        (
            {"model": "tiny", "training_file": "f", "hyperparameters": {"n_epochs": 0}},
            "hyperparameters.n_epochs",
            "greater than or equal to 1",
        ),
    ],
)
def test_refused_requests_name_the_parameter(body, param, words):
    with pytest.raises(ApiError) as error:
        create.parse_request(body)
    assert (error.value.status, error.value.param) == (400, param)
    assert words in error.value.message


def test_models_resolve_to_uris_or_jobs_and_unknown_ones_say_what_works():
    base = {"tiny": "pvc://models/tiny"}
    assert create.resolve_model("tiny", base) == ("uri", "pvc://models/tiny")
    assert create.resolve_model("hf://org/x", base) == ("uri", "hf://org/x")
    assert create.resolve_model("org/x", base) == ("uri", "hf://org/x")
    assert create.resolve_model("ftjob-abc", base) == ("job", "ftjob-abc")
    with pytest.raises(ApiError, match="configured model \\(tiny\\)"):
        create.resolve_model("gpt-4o-mini:2024_07_18", base)


def test_a_finetunejob_the_api_server_would_refuse_is_a_400_naming_the_field():
    settings = SETTINGS.model_copy(update={"base_learning_rate": 0.5})
    request = create.parse_request({"model": "tiny", "training_file": "f",
                                    "hyperparameters": {"learning_rate_multiplier": 4}})  # fmt: skip
    with pytest.raises(ApiError) as error:
        create.finetunejob(request, name="ftjob-x", namespace="ns", user="u", model=("uri", "hf://o/m"),
                           file_kind="chat", dataset_uri="pvc://f/x", has_validation=False, settings=settings,
                           seed=1, idempotency_key=None)  # fmt: skip
    assert error.value.status == 400 and error.value.param == "hyperparameters.learning_rate_multiplier"
    assert "spec.training.learningRate" in error.value.message


def test_job_names_come_from_the_idempotency_key_per_caller_and_namespace():
    one = create.job_name("ns", "alice", "key-1")
    assert one == create.job_name("ns", "alice", "key-1") and one.startswith("ftjob-") and len(one) == 30
    assert len({one, create.job_name("ns", "bob", "key-1"), create.job_name("other", "alice", "key-1"),
                create.job_name("ns", "alice", "key-2")}) == 4  # fmt: skip
    assert create.job_name("ns", "alice", None) != create.job_name("ns", "alice", None)


def cond(type_: str, status: str, reason: str = "R", message: str = "m") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:10Z"}  # fmt: skip


def ftj(status: dict | None = None, annotations: dict | None = None) -> dict:
    return {
        "metadata": {"name": "ftjob-1", "namespace": "ns", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": annotations or {}},
        "spec": {"model": {"uri": "hf://o/m"}, "dataset": {"uri": "hf://o/d"}},
        "status": status or {},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("status", "annotations", "expected"),
    [
        ({}, None, "validating_files"),
        ({"phase": "Pending", "conditions": [cond("Validated", "True")]}, None, "queued"),
        (
            {"phase": "Running", "conditions": [cond("Validated", "True"), cond("Running", "True")]},
            None,
            "running",
        ),
        ({"phase": "Succeeded", "conditions": [cond("Succeeded", "True")]}, None, "succeeded"),
        (
            {"phase": "Failed", "conditions": [cond("Failed", "True", "BackoffLimitExceeded", "exit 1")]},
            None,
            "failed",
        ),
        (
            {"phase": "Pending", "conditions": [cond("Validated", "False", "InvalidSpec", "bad")]},
            None,
            "failed",
        ),
        ({"phase": "Suspended", "conditions": [cond("Suspended", "True")]}, None, "paused"),
        ({"phase": "Suspended"}, {create.ANN_CANCELLED: "2026-01-01T00:01:00Z"}, "cancelled"),
    ],
)
def test_status_follows_the_conditions(status, annotations, expected):
    obj = ftj(status, annotations)
    assert views.job_status(obj) == expected
    job = views.job_object(obj, fine_tuned_model=None, base_learning_rate=1e-4)
    if expected == "failed":
        assert job["error"]["message"] in ("exit 1", "bad") and job["error"]["code"] in (
            "BackoffLimitExceeded",
            "InvalidSpec",
        )
    else:
        assert job["error"] is None


def test_events_checkpoints_and_trained_tokens_come_from_the_status_and_the_events():
    status = {
        "phase": "Succeeded", "completionTime": "2026-01-01T00:05:00Z",
        "conditions": [{**cond("Succeeded", "True", "Completed", "run r finished"),
                        "lastTransitionTime": "2026-01-01T00:05:00Z"}],
        "progress": {"step": 6, "totalSteps": 6, "loss": 1.25, "updatedAt": "2026-01-01T00:04:00Z"},
        "checkpoint": {"uri": "pvc://m/ftjob-1/checkpoints/checkpoint-6", "step": 6, "savedAt": "2026-01-01T00:04:30Z"},
        "result": {"uri": "pvc://m/ftjob-1", "metrics": {"num_input_tokens_seen": 4321.0}},
    }  # fmt: skip
    obj = ftj(status)
    kube_events = [{"metadata": {"uid": "e1"}, "type": "Normal", "reason": "JobCreated", "message": "created trainer Job",
                    "lastTimestamp": "2026-01-01T00:00:01Z"}]  # fmt: skip
    events = views.job_events(obj, kube_events)
    assert [e["id"] for e in events] == [
        "ftevent-u1-succeeded", "ftevent-u1-checkpoint-6", "ftevent-u1-step-6", "ftevent-e1", "ftevent-u1-created"
    ]  # fmt: skip
    metrics = events[2]
    assert (
        metrics["type"] == "metrics"
        and metrics["data"]["train_loss"] == 1.25
        and "Step 6/6" in metrics["message"]
    )
    first = views.page(events, None, 2)
    assert first["has_more"] and [e["id"] for e in first["data"]] == [e["id"] for e in events[:2]]
    rest = views.page(events, first["last_id"], 10)
    assert not rest["has_more"] and len(rest["data"]) == 3
    (checkpoint,) = views.job_checkpoints(obj)
    assert checkpoint["step_number"] == 6 and checkpoint["fine_tuned_model_checkpoint"].endswith(
        "checkpoint-6"
    )
    assert checkpoint["metrics"]["train_loss"] == 1.25
    job = views.job_object(obj, fine_tuned_model="support", base_learning_rate=1e-4)
    assert (job["trained_tokens"], job["finished_at"], job["fine_tuned_model"]) == (
        4321,
        1767225900,
        "support",
    )


def test_models_are_what_ready_modelserves_serve():
    def ms(name, ready, ref=None, adapters=()):
        return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"model": {"fineTuneJobRef": {"name": ref}} if ref else {"uri": "hf://o/m"},
                         "adapters": [{"name": a, "fineTuneJobRef": {"name": j}} for a, j in adapters]},
                "status": {"endpoint": f"http://{name}.ns.svc:80",
                           "conditions": [cond("Ready", "True" if ready else "False")]}}  # fmt: skip

    served = [
        ms("base", True, adapters=[("support", "ftjob-1")]),
        ms("down", False, ref="ftjob-2"),
        ms("full", True, ref="ftjob-3"),
    ]
    assert [m["id"] for m in views.models(served)] == ["base", "full", "support"]
    support = next(m for m in views.models(served) if m["id"] == "support")
    assert support["base_url"] == "http://base.ns.svc:80/v1" and support["fine_tuning_job"] == "ftjob-1"
    assert views.fine_tuned_model("ftjob-1", served) == "support"
    assert views.fine_tuned_model("ftjob-3", served) == "full"
    assert views.fine_tuned_model("ftjob-2", served) is None  # not Ready


def test_the_namespace_comes_from_the_header_or_the_service_account():
    sa = Caller("system:serviceaccount:team-a:ci")
    assert sa.service_account_namespace == "team-a"
    assert target_namespace(sa, None) == "team-a" and target_namespace(sa, "team-b") == "team-b"
    with pytest.raises(ApiError, match="no namespace"):
        target_namespace(Caller("alice"), None)
    with pytest.raises(ApiError, match="not a namespace"):
        target_namespace(Caller("alice"), "Team_A")
    review = access_review(Caller("alice", "u1", ("dev",), {"k": ["v"]}), "team-a", "create", "finetunejobs")
    assert review["spec"] == {"user": "alice", "uid": "u1", "groups": ["dev"], "extra": {"k": ["v"]},
                              "resourceAttributes": {"namespace": "team-a", "verb": "create",
                                                     "group": "kubetune.io", "resource": "finetunejobs"}}  # fmt: skip
