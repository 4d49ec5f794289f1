"""FineTuneJobs, their Events and ModelServes -> the objects of OpenAI's API (pure).

Status of a job, from the FineTuneJob's conditions (first match wins):

| FineTuneJob | OpenAI status |
|---|---|
| annotation openai.kubetune.io/cancelled-at (cancel through the API; the run is suspended) | cancelled |
| phase Succeeded | succeeded |
| phase Failed, or Validated=False | failed (error: the condition's reason and message) |
| phase Suspended (pause through the API, or spec.suspend) | paused |
| Running=True | running |
| Validated=True (waiting for its pods, a queue or the job it starts from) | queued |
| nothing yet (the operator has not seen it) | validating_files |
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from .create import (
    ANN_CANCELLED,
    ANN_METADATA,
    ANN_METHOD,
    ANN_MODEL,
    ANN_SUFFIX,
    ANN_TRAINING_FILE,
    ANN_VALIDATION_FILE,
)
from .errors import bad_request

TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE = 3, 8  # the FineTuneJob's defaults (when the spec leaves them out)


def epoch(value: str | None) -> int | None:
    """Unix seconds of a Kubernetes timestamp (RFC 3339), None for none."""
    if not value:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp())


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in ((obj.get("status") or {}).get("conditions") or [])}


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def job_status(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    conds = _conditions(obj)
    phase = status.get("phase")

    def true(kind: str) -> bool:
        return (conds.get(kind) or {}).get("status") == "True"

    if _annotations(obj).get(ANN_CANCELLED):
        return "cancelled"
    if phase == "Succeeded" or true("Succeeded"):
        return "succeeded"
    if phase == "Failed" or true("Failed") or (conds.get("Validated") or {}).get("status") == "False":
        return "failed"
    if phase == "Suspended" or true("Suspended"):
        return "paused"
    if true("Running"):
        return "running"
    if true("Validated"):
        return "queued"
    return "validating_files"


def job_error(obj: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's error object of a failed job: the Failed (or Validated=False) condition's reason and message."""
    if job_status(obj) != "failed":
        return None
    conds = _conditions(obj)
    failed = conds.get("Failed") or {}
    cond = failed if failed.get("status") == "True" else conds.get("Validated") or {}
    message = cond.get("message") or "the FineTuneJob failed"
    param = "training_file" if "dataset" in message else None
    return {"code": cond.get("reason") or "Failed", "message": message, "param": param}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def job_object(
    obj: dict[str, Any], *, fine_tuned_model: str | None, base_learning_rate: float
) -> dict[str, Any]:
    """The fine_tuning.job object of a FineTuneJob (made through the API or not)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ann = _annotations(obj)
    training = spec.get("training") or {}
    state = job_status(obj)
    model_spec = spec.get("model") or {}
    model = (
        ann.get(ANN_MODEL) or model_spec.get("uri") or (model_spec.get("fineTuneJobRef") or {}).get("name")
    )
    objective = (spec.get("objective") or {}).get("type", "sft")
    method_type = ann.get(ANN_METHOD) or {"sft": "supervised", "dpo": "dpo"}.get(objective, objective)
    learning_rate = _number(training.get("learningRate"))
    hyper: dict[str, Any] = {
        "n_epochs": training.get("epochs", DEFAULT_EPOCHS),
        "batch_size": training.get("batchSize", DEFAULT_BATCH_SIZE),
        "learning_rate_multiplier": round(learning_rate / base_learning_rate, 6) if learning_rate else "auto",
    }
    method: dict[str, Any] = {"type": method_type}
    if method_type == "dpo":
        beta = ((spec.get("objective") or {}).get("dpo") or {}).get("beta", 0.1)
        method["dpo"] = {"hyperparameters": {**hyper, "beta": beta}}
    elif method_type == "supervised":
        method["supervised"] = {"hyperparameters": hyper}
    progress = status.get("progress") or {}
    result = status.get("result") or {}
    tokens = _number((result.get("metrics") or {}).get("num_input_tokens_seen"))
    finished = epoch(status.get("completionTime")) if state in ("succeeded", "failed") else None
    if state == "cancelled":
        finished = epoch(ann.get(ANN_CANCELLED))
    eta, updated = _number(progress.get("etaSeconds")), epoch(progress.get("updatedAt"))
    metadata = ann.get(ANN_METADATA)
    return {
        "id": meta.get("name"),
        "object": "fine_tuning.job",
        "created_at": epoch(meta.get("creationTimestamp")) or 0,
        "error": job_error(obj),
        "fine_tuned_model": fine_tuned_model,
        "finished_at": finished,
        "hyperparameters": hyper,
        "model": model,
        "organization_id": meta.get("namespace"),
        "result_files": [],
        "seed": training.get("seed", 42),
        "status": state,
        "trained_tokens": int(tokens) if tokens is not None and state == "succeeded" else None,
        "training_file": ann.get(ANN_TRAINING_FILE) or (spec.get("dataset") or {}).get("uri"),
        "validation_file": ann.get(ANN_VALIDATION_FILE),
        "estimated_finish": int(updated + eta)
        if state == "running" and eta is not None and updated
        else None,
        "integrations": [],
        "metadata": json.loads(metadata) if metadata else None,
        "method": method,
        "user_provided_suffix": ann.get(ANN_SUFFIX),
        # kubetune's own view, beside OpenAI's fields (clients ignore fields they do not know)
        "kubetune": {
            "phase": status.get("phase"),
            "progress": progress.get("percent"),
            "result_uri": result.get("uri"),
        },
    }


def metadata_matches(obj: dict[str, Any], wanted: dict[str, str]) -> bool:
    """The list filter metadata[k]=v: every pair is in the job's metadata."""
    raw = _annotations(obj).get(ANN_METADATA)
    have = json.loads(raw) if raw else {}
    return all(have.get(key) == value for key, value in wanted.items())


def newest_first(objs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        objs,
        key=lambda o: (
            (o.get("metadata") or {}).get("creationTimestamp") or "",
            (o.get("metadata") or {}).get("name"),
        ),
        reverse=True,
    )


def page(items: Sequence[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """One page of a cursor list: the items after the one whose id is AFTER, at most LIMIT of them."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise bad_request(f"after: {after!r} is not in this list", "after")
        start = ids.index(after) + 1
    chunk = list(items[start : start + limit])
    return {
        "object": "list",
        "data": chunk,
        "has_more": start + limit < len(items),
        "first_id": chunk[0]["id"] if chunk else None,
        "last_id": chunk[-1]["id"] if chunk else None,
    }


def _event(ident: str, created: int | None, level: str, message: str, kind: str = "message",
           data: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "id": ident,
        "object": "fine_tuning.job.event",
        "created_at": created or 0,
        "level": level,
        "message": message,
        "type": kind,
        "data": data or {},
    }


def job_events(obj: dict[str, Any], kube_events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job's events, newest first: its Kubernetes Events (what the operator recorded; the API server
    keeps them for an hour by default), its creation, the latest progress (type metrics) and checkpoint,
    and how it ended (from the conditions, which outlive the Events)."""
    meta = obj.get("metadata") or {}
    uid = meta.get("uid") or meta.get("name")
    status = obj.get("status") or {}
    out = [_event(f"ftevent-{uid}-created", epoch(meta.get("creationTimestamp")), "info",
                  f"Created fine-tuning job: {meta.get('name')}")]  # fmt: skip
    seen = set()
    for ev in kube_events:
        when = ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp")
        when = when or (ev.get("metadata") or {}).get("creationTimestamp")
        reason, message = ev.get("reason") or "", ev.get("message") or ""
        seen.add(reason)
        level = "warn" if ev.get("type") == "Warning" else "info"
        if reason in ("Failed", "BackoffLimitExceeded"):
            level = "error"
        data = {"reason": reason, "count": ev.get("count") or 1}
        out.append(_event(f"ftevent-{(ev.get('metadata') or {}).get('uid')}", epoch(when), level,
                          f"{reason}: {message}" if reason else message, data=data))  # fmt: skip
    progress = status.get("progress") or {}
    step = progress.get("step") or 0
    if step:
        total = progress.get("totalSteps") or 0
        loss = _number(progress.get("loss"))
        data = {
            "step": step,
            "total_steps": total,
            "epoch": progress.get("epoch"),
            "train_loss": loss,
            "valid_loss": _number(progress.get("evalLoss")),
            "learning_rate": _number(progress.get("learningRate")),
            "tokens_per_second": _number(progress.get("tokensPerSecond")),
        }
        words = f"Step {step}/{total}" + (f": training loss={loss:.4f}" if loss is not None else "")
        out.append(_event(f"ftevent-{uid}-step-{step}", epoch(progress.get("updatedAt")), "info", words,
                          "metrics", data))  # fmt: skip
    checkpoint = status.get("checkpoint") or {}
    if checkpoint.get("step"):
        out.append(_event(f"ftevent-{uid}-checkpoint-{checkpoint['step']}", epoch(checkpoint.get("savedAt")),
                          "info", f"Checkpoint saved at step {checkpoint['step']}: {checkpoint.get('uri')}"))  # fmt: skip
    for kind, level, words in (("Succeeded", "info", "The job has successfully completed"),
                               ("Failed", "error", "The job failed")):  # fmt: skip
        cond = _conditions(obj).get(kind) or {}
        if cond.get("status") == "True" and cond.get("reason") not in seen:
            out.append(_event(f"ftevent-{uid}-{kind.lower()}", epoch(cond.get("lastTransitionTime")), level,
                              f"{words}: {cond.get('message') or cond.get('reason')}"))  # fmt: skip
    cancelled = _annotations(obj).get(ANN_CANCELLED)
    if cancelled:
        out.append(_event(f"ftevent-{uid}-cancelled", epoch(cancelled), "info", "The job was cancelled"))
    return sorted(out, key=lambda e: (e["created_at"], e["id"]), reverse=True)


def job_checkpoints(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The latest complete checkpoint from status (the trainer keeps checkpoints.keepLast of them on the
    output volume; the status names the latest)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    checkpoint = status.get("checkpoint") or {}
    if not checkpoint.get("uri") or checkpoint.get("step") is None:
        return []
    step = int(checkpoint["step"])
    progress = status.get("progress") or {}
    metrics: dict[str, Any] = {"step": float(step)}
    if progress.get("step") == step:
        metrics["train_loss"] = _number(progress.get("loss"))
        metrics["valid_loss"] = _number(progress.get("evalLoss"))
    return [
        {
            "id": f"ftckpt-{meta.get('name')}-{step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": epoch(checkpoint.get("savedAt")) or 0,
            "fine_tuned_model_checkpoint": checkpoint["uri"],
            "fine_tuning_job_id": meta.get("name"),
            "metrics": metrics,
            "step_number": step,
        }
    ]


def _ready(ms: dict[str, Any]) -> bool:
    return (_conditions(ms).get("Ready") or {}).get("status") == "True"


def served_names(ms: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(served name, FineTuneJob it serves or None) of a ModelServe: the ModelServe's name for its model,
    each adapter's name for the adapter (what clients pass as `model` to its endpoint)."""
    spec = ms.get("spec") or {}
    model_ref = ((spec.get("model") or {}).get("fineTuneJobRef") or {}).get("name")
    names = [((ms.get("metadata") or {}).get("name") or "", model_ref)]
    for adapter in spec.get("adapters") or []:
        names.append((adapter.get("name") or "", (adapter.get("fineTuneJobRef") or {}).get("name")))
    return names


def fine_tuned_model(job: str, modelserves: Iterable[dict[str, Any]]) -> str | None:
    """The name under which a Ready ModelServe serves JOB's result (the first, by name), else None."""
    for ms in sorted(modelserves, key=lambda m: (m.get("metadata") or {}).get("name") or ""):
        if _ready(ms):
            for name, source in served_names(ms):
                if source == job:
                    return name
    return None


def models(modelserves: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One model object per name a Ready ModelServe serves, with its endpoint (OpenAI-compatible under /v1)."""
    out = []
    for ms in modelserves:
        if not _ready(ms):
            continue
        meta = ms.get("metadata") or {}
        endpoint = (ms.get("status") or {}).get("endpoint")
        for name, job in served_names(ms):
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "created": epoch(meta.get("creationTimestamp")) or 0,
                    "owned_by": meta.get("namespace"),
                    "endpoint": endpoint,
                    "base_url": f"{endpoint.rstrip('/')}/v1" if endpoint else None,
                    "modelserve": meta.get("name"),
                    "fine_tuning_job": job,
                    "engine": (ms.get("spec") or {}).get("engine", "tgi"),
                }
            )
    return sorted(out, key=lambda m: m["id"])


__all__ = [
    "TERMINAL", "epoch", "fine_tuned_model", "job_checkpoints", "job_error", "job_events", "job_object",
    "job_status", "metadata_matches", "models", "newest_first", "page", "served_names",
]  # fmt: skip
