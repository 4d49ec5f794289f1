"""The run's result in the output location: adapter or model + tokenizer, merged model, model card,
lineage.json, and the completion marker ``_SUCCESS`` written last. s3:// output is staged locally, then uploaded
(checkpoints are uploaded as they complete: remote.py). For an oci:// output the result is written the same
way to its checkpoint storage (output.checkpointUri), then pushed from there (publish.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import EvaluationStatus, ResultStatus, TrainerConfig

from . import sources

log = logging.getLogger("kubetune_trainer.artifacts")

SUCCESS = "_SUCCESS"
LINEAGE = "lineage.json"
MERGED = "merged"
SKIP_UPLOAD = {"checkpoints", SUCCESS}


def kubetune_version() -> str:
    try:
        return metadata.version("kubetune")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def storage_uri(config: TrainerConfig) -> str | None:
    """Where checkpoints and the saved result live: output.uri, or output.checkpointUri for an oci:// output
    (None: only the local output_dir, as in local runs)."""
    runtime = config.runtime
    if runtime.output_uri and runtime.output_uri.startswith("oci://"):
        return runtime.checkpoint_uri
    return runtime.output_uri


def result_uri(config: TrainerConfig, *parts: str) -> str:
    base = storage_uri(config) or f"file://{Path(config.runtime.output_dir).absolute()}"
    return "/".join([base.rstrip("/"), *parts])


def clear_marker(output_dir: str) -> None:
    """A new run invalidates an old result's marker until it writes its own."""
    (Path(output_dir) / SUCCESS).unlink(missing_ok=True)


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
    return out


def merge_adapter(adapter_dir: Path, base_loader, dest: Path, tokenizer) -> None:
    """Load the base again (not quantized), apply the saved adapter, merge, and save a plain model."""
    from peft import PeftModel

    base = base_loader()
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))


def model_card(config: TrainerConfig, kind: str, metrics: dict[str, float], lineage: dict) -> str:
    from huggingface_hub import ModelCardData

    spec = config.job.spec
    base = lineage.get("baseModel", {}).get("uri") or ""
    data = ModelCardData(
        library_name="peft" if kind in ("adapter", "prefix", "prompt") else "transformers",
        base_model=base[len("hf://") :] if base.startswith("hf://") else None,
        tags=["kubetune", spec.method.type, spec.objective.type, spec.model.task],
    )
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()))
    name = config.job.metadata.name or "model"
    return f"""---
{data.to_yaml()}
---

# {name}

Fine-tuned by [kubetune](https://github.com/kubetune/kubetune) from FineTuneJob `{config.job.metadata.namespace or "default"}/{name}`.

- Base model: `{base}` (revision `{lineage.get("baseModel", {}).get("resolvedRevision")}`)
- Task: {spec.model.task}; method: {spec.method.type} (result: {kind}); objective: {spec.objective.type}
- Dataset: `{spec.dataset.uri}` (digest `{lineage.get("dataset", {}).get("digest")}`)
- Config hash: `{lineage.get("configHash")}`

## Metrics

| metric | value |
|---|---|
{rows}

## Lineage

See `lineage.json` beside this file.
"""


def upload(local_dir: Path, uri: str) -> None:
    """Copy local_dir to s3://BUCKET/PREFIX, the completion marker last."""
    from kubetune.api.v1alpha1 import parse_uri

    parsed = parse_uri(uri, ("s3",))
    fs = sources.s3_filesystem()
    remote = f"{parsed.bucket}/{parsed.path}".rstrip("/")
    with contextlib.suppress(FileNotFoundError):  # an older result's marker must not vouch for new files
        fs.rm_file(f"{remote}/{SUCCESS}")
    for path in sorted(local_dir.rglob("*")):
        rel = path.relative_to(local_dir)
        if path.is_dir() or rel.parts[0] in SKIP_UPLOAD:
            continue
        fs.put_file(str(path), f"{remote}/{rel.as_posix()}")
    if (local_dir / SUCCESS).exists():
        fs.put_file(str(local_dir / SUCCESS), f"{remote}/{SUCCESS}")


def upload_file(local_dir: Path, rel: str, uri: str) -> None:
    """Copy one file of local_dir to the same place under s3://BUCKET/PREFIX (e.g. an updated lineage.json)."""
    from kubetune.api.v1alpha1 import parse_uri

    parsed = parse_uri(uri, ("s3",))
    remote = f"{parsed.bucket}/{parsed.path}".rstrip("/")
    sources.s3_filesystem().put_file(str(local_dir / rel), f"{remote}/{rel}")


# Under FSDP, checkpoints of full fine-tunes are saved sharded (fast, any size); the final model must be
# gathered: save_weights switches the plugin to this before the last save_model.
FINAL_FSDP_STATE_DICT_TYPE = "FULL_STATE_DICT"


def save_weights(trainer, output_dir: str) -> None:
    """The adapter or the full model (every process calls this: FSDP/DeepSpeed gather the weights)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = trainer.accelerator.state.fsdp_plugin
        plugin.set_state_dict_type(FINAL_FSDP_STATE_DICT_TYPE)
    trainer.save_model(output_dir)


def save(
    config: TrainerConfig,
    trainer,
    tokenizer,
    *,
    kind: str,
    result_kind: str | None = None,
    metrics: dict[str, float],
    base_revision: str | None,
    dataset_digest: str,
    started_at: datetime,
    base_loader=None,
    precision: str | None = None,
    distributed: dict | None = None,
    evaluation: EvaluationStatus | None = None,
) -> dict:
    """Write the rest of the result beside the saved weights (main process) and return it as ResultStatus JSON.
    KIND: what the weights are (adapter, full, ...); RESULT_KIND: status.result.kind when the objective says
    otherwise (reward-model)."""
    spec = config.job.spec
    out = Path(config.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    for stale in ("training_args.bin",):
        (out / stale).unlink(missing_ok=True)

    merged_uri = None
    if spec.output.merge_adapter and kind == "adapter":
        if base_loader is None:
            raise RuntimeError("merging needs a base model loader")
        shutil.rmtree(out / MERGED, ignore_errors=True)
        merge_adapter(out, base_loader, out / MERGED, tokenizer)
        merged_uri = result_uri(config, MERGED)

    chain = config.runtime.chain
    result = ResultStatus(
        uri=result_uri(config),
        kind=result_kind or kind,
        parents=chain.parents if chain else [],
        merged_uri=merged_uri,
        metrics=metrics,
        base_model_revision=base_revision,
        dataset_digest=dataset_digest,
        config_hash=config.runtime.run_id,
        image=config.runtime.image,
        # spec.evaluation: promoted only when the result passed its gates (no evaluation: left unset)
        promoted=evaluation.passed if evaluation is not None else None,
    ).to_dict()
    lineage = {
        "kubetuneVersion": kubetune_version(),
        "finetuneJob": {
            "name": config.job.metadata.name,
            "namespace": config.job.metadata.namespace,
            "uid": config.runtime.uid,
        },
        "baseModel": {
            "uri": spec.model.uri or (chain.model.uri if chain and chain.model else None),
            "revision": spec.model.revision,
            "resolvedRevision": base_revision,
            "fineTuneJobRef": spec.model.fine_tune_job_ref.name if spec.model.fine_tune_job_ref else None,
            "mergedAdapters": list(chain.model.adapters) if chain and chain.model else [],
        },
        "parents": [p.to_dict() for p in chain.parents] if chain else [],
        "dataset": {
            "uri": spec.dataset.uri,
            "config": spec.dataset.config,
            "digest": dataset_digest,
            "format": spec.dataset.format,
        },
        "method": spec.method.type,
        "objective": spec.objective.type,
        "task": spec.model.task,
        "precision": precision,
        "distributed": distributed,  # world size, strategy, backend, the replicas' weight digests
        "resultKind": result["kind"],
        "savedAs": kind,  # adapter or full weights (a reward model may be either)
        "configHash": config.runtime.run_id,
        "image": config.runtime.image,
        "metrics": metrics,
        "evaluation": evaluation.to_dict() if evaluation is not None else None,
        "spec": spec.to_dict(),
        "startedAt": started_at.isoformat(),
        "finishedAt": datetime.now(UTC).isoformat(),
        "result": result,
    }
    (out / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
    (out / "README.md").write_text(model_card(config, kind, metrics, lineage))
    # the completion marker comes last: a reader that sees it sees a complete result
    marker = out / (SUCCESS + ".tmp")
    marker.write_text(json.dumps(result, indent=2, sort_keys=True))
    marker.replace(out / SUCCESS)
    storage = storage_uri(config)
    if storage and storage.startswith("s3://"):
        upload(out, storage)
    return result
