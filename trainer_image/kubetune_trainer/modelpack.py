"""A result folder as a CNCF ModelPack artifact (github.com/modelpack/model-spec, docs/spec.md, config.md,
annotations.md): what its layers, config and manifest are. Pure but for reading the files; the registry
traffic is in oci.py.

- One layer per file, an uncompressed tar holding just that file (weights are incompressible; one file per
  layer lets a registry and a runtime share unchanged files between versions), made reproducibly: owner 0:0,
  mode 0644, mtime 0, so the same file is always the same blob.
- Media types by role: weights (``*.safetensors``, ``*.bin``, ...), weight configs (config.json, tokenizer
  files, adapter_config.json, ...), docs (README.md, lineage.json, licenses), code (``*.py`` of
  trust_remote_code models).
- Layer annotations: ``org.cncf.model.filepath`` (the file's path in the model folder),
  ``org.cncf.model.file.metadata+json`` and ``org.opencontainers.image.title`` (what oras names pulled files by).
- The config (application/vnd.cncf.model.config.v1+json) describes the model (format, parameter count,
  precision) and lists the layers' DiffIDs; the manifest carries the lineage as annotations
  (``io.kubetune.*``) next to lineage.json, a doc layer.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.tar"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.tar"
DOC = "application/vnd.cncf.model.doc.v1.tar"
CODE = "application/vnd.cncf.model.code.v1.tar"
LAYER_MEDIA_TYPES = (WEIGHT, WEIGHT_CONFIG, DOC, CODE)

ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_DESCRIPTION = "org.opencontainers.image.description"
# The lineage, as manifest annotations (values are strings; lineage.json in the artifact has all of it).
KUBETUNE_PREFIX = "io.kubetune."
ANNOTATION_FINETUNEJOB = "io.kubetune.finetunejob"
ANNOTATION_UID = "io.kubetune.finetunejob.uid"
ANNOTATION_RUN_ID = "io.kubetune.run-id"
ANNOTATION_RESULT_KIND = "io.kubetune.result-kind"
ANNOTATION_BASE_MODEL = "io.kubetune.base-model"
ANNOTATION_BASE_REVISION = "io.kubetune.base-model.revision"
ANNOTATION_DATASET = "io.kubetune.dataset"
ANNOTATION_DATASET_DIGEST = "io.kubetune.dataset.digest"
ANNOTATION_PARENTS = "io.kubetune.parents"
ANNOTATION_IMAGE = "io.kubetune.image"

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack")
DOC_NAMES = ("readme", "license", "licence", "notice", "lineage.json", "model_card")
# Never part of a result artifact: training state and the trackers' files stay on the checkpoint storage.
SKIPPED_TOP = ("checkpoints", "tensorboard", "wandb", "merged", "runs")
SKIPPED_NAMES = ("_SUCCESS", "_SUCCESS.tmp", "training_args.bin", "publication.json")
TAR_MODE = 0o644
TAR_TYPEFLAG_REGULAR = 48  # "0", as the File Metadata annotation writes a tar typeflag byte


def media_type_of(rel: str) -> str:
    """The ModelPack layer media type of the file at REL (a path inside the model folder)."""
    name = PurePosixPath(rel).name.lower()
    if name.endswith(WEIGHT_SUFFIXES):
        return WEIGHT
    if name.startswith(DOC_NAMES) or (
        name.endswith((".md", ".txt")) and not name.startswith(("merges", "vocab"))
    ):
        return DOC
    if name.endswith(".py"):
        return CODE
    return WEIGHT_CONFIG


def result_files(folder: Path) -> list[str]:
    """The files of a result folder that go into its artifact, as sorted POSIX paths relative to it."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if not path.is_file() or path.is_symlink():
            continue
        if rel.parts[0] in SKIPPED_TOP or rel.name in SKIPPED_NAMES or rel.name.startswith("."):
            continue
        found.append(rel.as_posix())
    order = {WEIGHT: 0, WEIGHT_CONFIG: 1, CODE: 2, DOC: 3}
    return sorted(found, key=lambda rel: (order[media_type_of(rel)], rel))


@dataclass(frozen=True)
class Layer:
    """One file packed as a layer blob (a tar file on disk)."""

    rel: str
    blob: Path
    media_type: str
    digest: str
    size: int
    file_size: int

    def descriptor(self) -> dict[str, Any]:
        metadata = {"name": self.rel, "mode": TAR_MODE, "uid": 0, "gid": 0, "size": self.file_size,
                    "mtime": "1970-01-01T00:00:00Z", "typeflag": TAR_TYPEFLAG_REGULAR}  # fmt: skip
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "annotations": {
                ANNOTATION_FILEPATH: self.rel,
                ANNOTATION_FILE_METADATA: json.dumps(metadata, separators=(",", ":"), sort_keys=True),
                ANNOTATION_TITLE: self.rel,
            },
        }


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def pack_file(folder: Path, rel: str, blob_dir: Path) -> Layer:
    """Write the tar layer of FOLDER/REL into BLOB_DIR (reproducible: the same file gives the same bytes)."""
    source = folder / rel
    info = tarfile.TarInfo(rel)
    info.size = source.stat().st_size
    info.mode = TAR_MODE
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    blob_dir.mkdir(parents=True, exist_ok=True)
    blob = blob_dir / (hashlib.sha256(rel.encode()).hexdigest()[:16] + ".tar")
    with tarfile.open(blob, "w", format=tarfile.PAX_FORMAT) as tar, open(source, "rb") as data:
        tar.addfile(info, data)
    return Layer(rel, blob, media_type_of(rel), file_digest(blob), blob.stat().st_size, info.size)


def pack(folder: Path, blob_dir: Path) -> Iterator[Layer]:
    """Each file's layer, one at a time (the caller uploads and deletes it before the next is written, so a
    push needs scratch space for the largest file only)."""
    for rel in result_files(folder):
        yield pack_file(folder, rel, blob_dir)


# ---------------------------------------------------------------------------------------------- config

_SAFETENSORS_PRECISION = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool",
}  # fmt: skip


def weights_facts(folder: Path, files: list[str]) -> tuple[int, list[str]]:
    """(parameter count, precisions) of the safetensors weights among FILES (read from their headers)."""
    from safetensors import safe_open

    count, precisions = 0, set()
    for rel in files:
        if not rel.endswith(".safetensors"):
            continue
        with safe_open(str(folder / rel), framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                tensor = weights.get_slice(name)
                n = 1
                for dim in tensor.get_shape():
                    n *= dim
                count += n
                precisions.add(_SAFETENSORS_PRECISION.get(tensor.get_dtype(), tensor.get_dtype().lower()))
    return count, sorted(precisions)


def param_size(count: int) -> str:
    """ModelPack's paramSize: a count with at most one decimal and a scale letter (8b, 1.2m, 0.5k)."""
    for scale, letter in ((10**15, "q"), (10**12, "t"), (10**9, "b"), (10**6, "m")):
        if count >= scale:
            return f"{count / scale:.1f}".removesuffix(".0") + letter
    return f"{max(count, 100) / 1000:.1f}".removesuffix(".0") + "k"


def model_config(
    *,
    name: str,
    version: str,
    created: str,
    description: str,
    family: str | None,
    files: list[str],
    diff_ids: list[str],
    param_count: int,
    precisions: list[str],
    text_generation: bool,
) -> dict[str, Any]:
    """The ModelPack config document (only the fields its JSON schema defines: it allows no others)."""
    descriptor: dict[str, Any] = {
        "createdAt": created,
        "name": name,
        "version": version,
        "description": description,
    }
    if family:
        descriptor["family"] = family
    config: dict[str, Any] = {"architecture": "transformer"}
    weights = [f for f in files if media_type_of(f) == WEIGHT]
    if weights and all(f.endswith(".safetensors") for f in weights):
        config["format"] = "safetensors"
    if param_count:
        config["paramSize"] = param_size(param_count)
    if precisions:
        config["precision"] = ",".join(precisions)
    if text_generation:
        config["capabilities"] = {"inputTypes": ["text"], "outputTypes": ["text"]}
    return {"descriptor": descriptor, "config": config, "modelfs": {"type": "layers", "diffIds": diff_ids}}


def model_family(folder: Path) -> str | None:
    """config.json's model_type (llama, gpt2, t5, ...) when the folder has one (an adapter has none)."""
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") or None
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------- manifest


def lineage_annotations(lineage: dict[str, Any]) -> dict[str, str]:
    """The manifest's io.kubetune.* annotations: where the result came from, as strings."""
    job = lineage.get("finetuneJob") or {}
    base = lineage.get("baseModel") or {}
    dataset = lineage.get("dataset") or {}
    name = "/".join(p for p in (job.get("namespace"), job.get("name")) if p)
    values = {
        ANNOTATION_FINETUNEJOB: name,
        ANNOTATION_UID: job.get("uid"),
        ANNOTATION_RUN_ID: lineage.get("configHash"),
        ANNOTATION_RESULT_KIND: lineage.get("resultKind"),
        ANNOTATION_BASE_MODEL: base.get("uri"),
        ANNOTATION_BASE_REVISION: base.get("resolvedRevision"),
        ANNOTATION_DATASET: dataset.get("uri"),
        ANNOTATION_DATASET_DIGEST: dataset.get("digest"),
        ANNOTATION_PARENTS: json.dumps(lineage["parents"], sort_keys=True)
        if lineage.get("parents")
        else None,
        ANNOTATION_IMAGE: lineage.get("image"),
    }
    return {k: str(v) for k, v in values.items() if v}


def manifest(
    config_descriptor: dict[str, Any], layers: list[dict[str, Any]], annotations: dict[str, str]
) -> dict:
    """The image manifest of a ModelPack artifact."""
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config_descriptor,
        "layers": layers,
        "annotations": annotations,
    }


def is_model_manifest(doc: dict[str, Any]) -> bool:
    return (
        doc.get("artifactType") == ARTIFACT_TYPE
        or (doc.get("config") or {}).get("mediaType") == CONFIG_MEDIA_TYPE
    )
