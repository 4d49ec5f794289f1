"""Load the tokenizer and the base model of a FineTuneJob for its task, and pick the precision."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kubetune.api.v1alpha1 import ModelSpec, parse_uri
from kubetune.api.v1alpha1.trainerconfig import CACHE_DIR

from . import oci, sources
from .errors import ConfigError, TrainerError

AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "question-answering": "AutoModelForQuestionAnswering",
}


@dataclass
class ModelSource:
    """Where from_pretrained reads the model: a Hub id (with revision) or a local folder."""

    path: str
    revision: str | None
    uri: str
    is_hub: bool

    def kwargs(self, trust_remote_code: bool) -> dict:
        out: dict = {"trust_remote_code": trust_remote_code}
        if self.is_hub:
            out["revision"] = self.revision
            token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
            if token:
                out["token"] = token
        return out


def _cache_dir(*parts: str) -> Path:
    return sources.writable_dir(CACHE_DIR, *parts)


def resolve_source(spec: ModelSpec) -> ModelSource:
    uri = spec.uri
    if uri is None:
        raise TrainerError(
            "model.uri is not set: resolve model.fineTuneJobRef first (chain.base_model_spec gives its uri)"
        )
    parsed = parse_uri(uri)
    if parsed.scheme == "hf":
        return ModelSource(parsed.hf_repo_id, spec.revision or "main", uri, True)
    if parsed.scheme in ("pvc", "file"):
        path = sources.local_path(uri)
        if not path.exists():
            raise TrainerError(f"model.uri {uri}: {path} does not exist")
        return ModelSource(str(path), None, uri, False)
    if parsed.scheme == "oci":  # a ModelPack artifact, pulled once per digest; its digest is the revision
        dest = _cache_dir("models", "oci-" + hashlib.sha256(uri.encode()).hexdigest()[:12])
        have = oci.pulled_digest(dest)
        if have is None or not parsed.digest or have != parsed.digest:  # a tag may have moved: pull again
            have = oci.pull(uri, dest, auth_path=oci.auth_file("model")).digest
        return ModelSource(str(dest), have, uri, False)
    # s3: download to the cache first
    dest = _cache_dir("models", hashlib.sha256(uri.encode()).hexdigest()[:12])
    if not (dest / "config.json").exists():
        sources.download_s3(uri, dest)
    return ModelSource(str(dest), None, uri, False)


def resolved_revision(source: ModelSource) -> str | None:
    """The commit the Hub revision points at, the manifest digest of an oci:// model (None for local models or
    when it cannot be found offline)."""
    if source.uri.startswith("oci://"):
        return source.revision
    if not source.is_hub:
        return None
    if source.revision and re.fullmatch(r"[0-9a-f]{40}", source.revision):
        return source.revision
    try:
        from huggingface_hub import HfApi

        token = os.environ.get("HF_TOKEN")
        return HfApi().model_info(source.path, revision=source.revision, token=token).sha
    except Exception:
        pass
    try:  # offline: the snapshot folder in the local cache is named after the commit
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source.path, revision=source.revision, local_files_only=True)
        return Path(folder).name
    except Exception:
        return source.revision


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_precision(precision: str) -> str:
    """auto -> bf16 where the GPU supports it, else fp16 on a GPU, fp32 on CPU."""
    import torch

    gpu = torch.cuda.is_available()
    if precision == "auto":
        if not gpu:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not gpu:
        raise ConfigError("training.precision fp16 needs a GPU; use fp32 or bf16 (or auto) on CPU")
    if precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision bf16: this GPU does not support bfloat16; use fp16 or auto")
    return precision


def load_tokenizer(spec: ModelSpec, source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs(spec.trust_remote_code))
    except Exception as error:
        raise TrainerError(
            f"cannot load the tokenizer of {spec.uri}: {type(error).__name__}: {error}"
        ) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def load_model(
    spec: ModelSpec,
    source: ModelSource,
    *,
    dtype=None,
    quantization_config=None,
    label_names: list[str] | None = None,
    device_map=None,
):
    """The base model for the task (classification heads sized to numLabels, named by labels)."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[spec.task])
    kwargs = source.kwargs(spec.trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    if spec.task in ("sequence-classification", "token-classification"):
        names = label_names or spec.labels or [f"LABEL_{i}" for i in range(spec.num_labels or 0)]
        kwargs["num_labels"] = spec.num_labels
        kwargs["id2label"] = dict(enumerate(names))
        kwargs["label2id"] = {name: i for i, name in enumerate(names)}
        kwargs["ignore_mismatched_sizes"] = True
    try:
        model = auto.from_pretrained(source.path, **kwargs)
    except Exception as error:
        raise TrainerError(
            f"cannot load {spec.uri} as {AUTO_CLASSES[spec.task]} (model.task {spec.task}): {type(error).__name__}: {error}"
        ) from None
    return model
