"""After the result is saved on its storage (artifacts.save): push it to an oci:// output and register it in a
model registry (output.register). Nothing here can lose the result: it stays where artifacts.save wrote it
(output.checkpointUri for an oci:// output) whatever a registry says.

- oci:// output: the result folder is pushed as a ModelPack artifact to output.uri (oci.py); with a merged
  model (output.mergeAdapter), that one goes to the tag TAG-merged. status.result then names the pushed
  artifact (uri pinned by its digest, digest) and where the copy stays (storageUri).
- output.register.mlflow: a promoted result (result["promoted"], true unless an evaluation gate failed)
  becomes a model version (registration.py); status.result.registeredModel names it. A result that failed its
  gate is neither pushed (the tag keeps the last promoted result) nor registered.
- A refusal (bad reference, unreachable registry, 401/403, an existing tag, a failed registration) is
  status.result.publishError {reason, message}; the message says what to change and where the result is.
  The trainer then ends normally: training succeeded, and another attempt would only train again.

publication.json beside lineage.json on the storage records what happened: the digest and URI of the push,
the model version, or the error. lineage.json itself stays as it was pushed (an artifact cannot hold its own
digest), so pushing the same folder again gives the same artifact, digest and model version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import TrainerConfig, parse_uri
from kubetune.api.v1alpha1.uris import oci_uri

from . import artifacts, oci, registration, sources

log = logging.getLogger("kubetune_trainer.publish")

MERGED_TAG_SUFFIX = "-merged"
PUBLICATION = "publication.json"


def is_oci(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith("oci://")


def merged_target(uri: str) -> str:
    """Where the merged model of an oci:// output goes: the same repository, tag TAG-merged."""
    parsed = parse_uri(uri, ("oci",))
    tag = f"{parsed.tag}{MERGED_TAG_SUFFIX}"
    if len(tag) > 128:
        raise oci.OCIError(
            "InvalidReference",
            f"output.uri: the tag {parsed.tag!r} is too long for the merged model's {tag!r}",
        )
    return oci_uri(parsed.registry, parsed.repository, tag)


def _fail(result: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    log.error("%s: %s", reason, message)
    result["publishError"] = {"reason": reason, "message": message}
    return result


def _record(config: TrainerConfig, publication: dict[str, Any]) -> None:
    """Write what happened to publication.json beside lineage.json on the storage (uploaded for s3://)."""
    out = Path(config.runtime.output_dir)
    (out / PUBLICATION).write_text(json.dumps(publication, indent=2, sort_keys=True))
    storage = artifacts.storage_uri(config)
    if storage and storage.startswith("s3://"):
        try:
            artifacts.upload_file(out, PUBLICATION, storage)
        except Exception as error:  # noqa: BLE001 - botocore errors of many kinds; the local copy stays
            log.warning("could not upload %s to %s: %s", PUBLICATION, storage, error)


def publish(config: TrainerConfig, result: dict[str, Any]) -> dict[str, Any]:
    """Push (oci:// output) and register (output.register) RESULT; returns it with what that changed."""
    spec = config.job.spec
    runtime = config.runtime
    out = Path(runtime.output_dir)
    try:
        lineage = json.loads((out / artifacts.LINEAGE).read_text())
    except (OSError, ValueError):
        lineage = {}
    # who pushes: this run (a tag this run pushed before may be replaced by a retried attempt, no other)
    meta = config.job.metadata
    lineage["configHash"] = runtime.run_id
    lineage["finetuneJob"] = {"name": meta.name, "namespace": meta.namespace, "uid": runtime.uid}
    publication: dict[str, Any] = {}
    if is_oci(runtime.output_uri) and result.get("promoted") is False:
        # the tag keeps the last promoted result; this one stays on the checkpoint storage (storageUri)
        log.warning("the result failed its evaluation gate: not pushed to %s", runtime.output_uri)
        result["storageUri"] = result.get("uri")
        publication["oci"] = {"skipped": "the result failed its evaluation gate"}
    elif is_oci(runtime.output_uri):
        target = str(runtime.output_uri)
        storage = result.get("uri")
        name = config.job.metadata.name or "model"
        scratch = sources.work_dir("oci")
        try:
            pushed = oci.push(
                target, out, lineage=lineage, name=name, overwrite=spec.output.overwrite_tag,
                auth_path=oci.auth_file("output"), scratch=scratch,
            )  # fmt: skip
            merged = None
            if result.get("mergedUri"):
                merged = oci.push(
                    merged_target(target), out / artifacts.MERGED, lineage=lineage, name=f"{name}-merged",
                    overwrite=spec.output.overwrite_tag, auth_path=oci.auth_file("output"), scratch=scratch,
                )  # fmt: skip
        except oci.OCIError as error:
            message = f"{error.message}; the trained result is kept at {storage}"
            publication["error"] = {"reason": error.reason, "message": message}
            _record(config, publication)
            return _fail(result, error.reason, message)
        result.update(uri=pushed.uri, digest=pushed.digest, storageUri=storage)
        publication["oci"] = {"uri": pushed.uri, "digest": pushed.digest, "layers": pushed.layers}
        if merged is not None:
            result["mergedUri"] = merged.uri
            publication["ociMerged"] = {"uri": merged.uri, "digest": merged.digest}
    if registration.tracking_uri(config):
        if result.get("promoted", True) is False:
            log.warning("the result failed its evaluation gate: not registered in the model registry")
            publication["registration"] = {"skipped": "the result failed its evaluation gate"}
        else:
            try:
                result["registeredModel"] = registration.register(config, result, lineage)
                publication["registration"] = result["registeredModel"]
            except Exception as error:  # noqa: BLE001 - MLflow and HTTP errors of many kinds
                model = spec.output.registration.mlflow.model  # type: ignore[union-attr]
                message = (
                    f"output.register.mlflow: registering the result as a version of {model!r} at "
                    f"{registration.tracking_uri(config)} failed: {str(error)[:400]}; the result is at "
                    f"{result.get('uri')}"
                )
                publication["error"] = {"reason": "RegistrationFailed", "message": message}
                _record(config, publication)
                return _fail(result, "RegistrationFailed", message)
    if publication:
        _record(config, publication)
    return result
