"""Models that come from other FineTuneJobs (runtime.chain, resolved by the operator's reconcile/chains.py).

A chained job's spec has model.fineTuneJobRef instead of model.uri; the TrainerConfig carries what it resolved
to: a full model plus the adapters of the chain, which are merged into it in order before this job applies its
own method (so a LoRA on top of a LoRA trains on the merged weights). Reward models resolve the same way and
load as sequence classifiers with one output.
"""

from __future__ import annotations

import hashlib
import logging

from kubetune.api.v1alpha1 import ModelSpec, ResolvedModel, TrainerConfig

from . import oci, sources
from .errors import ConfigError, TrainerError

log = logging.getLogger("kubetune_trainer.chain")


def base_model_spec(config: TrainerConfig) -> ModelSpec:
    """spec.model with the resolved uri/revision of model.fineTuneJobRef (spec.model itself when it has a uri)."""
    model = config.job.spec.model
    if model.uri is not None:
        return model
    ref = model.fine_tune_job_ref.name if model.fine_tune_job_ref else "?"
    resolved = config.runtime.chain.model if config.runtime.chain else None
    if resolved is None:
        raise ConfigError(
            f"model.fineTuneJobRef {ref!r} was not resolved by the operator (no runtime.chain.model in the trainer "
            "config); run the FineTuneJob through the operator, or set model.uri for a local run"
        )
    return model.model_copy(
        update={"uri": resolved.uri, "fine_tune_job_ref": None, "revision": resolved.revision or "main"}
    )


def parent_adapters(config: TrainerConfig) -> list[str]:
    """The adapters of the chain merged into the base before training (first to last)."""
    chain = config.runtime.chain
    if config.job.spec.model.uri is not None or chain is None or chain.model is None:
        return []
    return list(chain.model.adapters)


def adapter_path(uri: str) -> str:
    """A local folder holding the adapter at URI (pvc/file as mounted, s3 and oci downloaded, hf as a Hub id)."""
    scheme = uri.split("://", 1)[0]
    if scheme in ("pvc", "file"):
        path = sources.local_path(uri)
        if not (path / "adapter_config.json").exists():
            raise TrainerError(f"the adapter {uri} of the chain has no adapter_config.json at {path}")
        return str(path)
    if scheme == "s3":
        dest = sources.work_dir("adapters", hashlib.sha256(uri.encode()).hexdigest()[:12])
        if not (dest / "adapter_config.json").exists():
            sources.download_s3(uri, dest)
        return str(dest)
    if scheme == "oci":  # another job's pushed adapter, pinned by its digest
        dest = sources.work_dir("adapters", "oci-" + hashlib.sha256(uri.encode()).hexdigest()[:12])
        if oci.pulled_digest(dest) is None:
            oci.pull(uri, dest, auth_path=oci.auth_file("model"), field="model.fineTuneJobRef")
        return str(dest)
    return uri.removeprefix("hf://")


def merge_adapters(model, adapters: list[str]):
    """MODEL with each adapter applied and merged in order (a plain transformers model again)."""
    if not adapters:
        return model
    from peft import PeftConfig, PeftModel

    for uri in adapters:
        log.info("merging the chain's adapter %s into the base model", uri)
        path = adapter_path(uri)
        try:
            config = PeftConfig.from_pretrained(path)
            if config.task_type == "CAUSAL_LM" and not hasattr(model, "prepare_inputs_for_generation"):
                # an SFT adapter under a reward model's classification head: same body, no generation
                config.task_type = None
            model = PeftModel.from_pretrained(model, path, config=config).merge_and_unload()
        except (ValueError, KeyError, OSError) as error:
            raise TrainerError(f"cannot merge the chain's adapter {uri} into its base: {error}") from None
    return model


def load_reward_model(resolved: ResolvedModel, trust_remote_code: bool = False):
    """(model, tokenizer) of a reward model: a sequence classifier with one output, adapters merged."""
    from . import model as model_mod

    spec = ModelSpec(
        uri=resolved.uri,
        revision=resolved.revision or "main",
        task="sequence-classification",
        num_labels=1,
        trust_remote_code=trust_remote_code,
    )
    source = model_mod.resolve_source(spec)
    tokenizer = model_mod.load_tokenizer(spec, source)
    model = model_mod.load_model(spec, source, label_names=["reward"])
    model = merge_adapters(model, resolved.adapters)
    if model.config.num_labels != 1:
        raise ConfigError(
            f"the reward model {resolved.uri} has {model.config.num_labels} outputs; a reward model has one "
            "(train it with objective.type reward)"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
