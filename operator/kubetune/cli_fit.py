"""The fit check on this machine: ``kubetune validate`` and ``kubetune train --dry-run`` print the estimate the
operator makes before it starts a run (kubetune.api.fit), from a config.json read here (kubetune.modelconfig).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubetune.api.fit import Verdict, gpu_memory_from_labels, verdict
from kubetune.api.modelshape import ShapeError
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.modelconfig import ConfigUnavailable, read_file, read_local

_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_memory(text: str) -> int:
    """Bytes of a quantity such as 24Gi, 80G or 81559Mi (for --gpu-memory)."""
    found = _QUANTITY.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a memory size; write it like 24Gi, 80G or 81559Mi")
    return int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])


@dataclass(frozen=True)
class FitOptions:
    model_config: str | None = None
    """A config.json (or model folder) to use instead of reading the model's."""
    gpu_memory: int | None = None
    """Bytes of one GPU (--gpu-memory), else from resources.nodeSelector's GPU labels."""
    fetch: bool = False
    """Read hf:// configs from the Hub (else only from the local cache)."""


def check(job: FineTuneJob, options: FitOptions) -> tuple[Verdict | None, str]:
    """The fit verdict of JOB (None when it cannot be made here, with why)."""
    spec = job.spec
    if spec.resources.gpus_per_node < 1:
        return None, "not checked: the run trains on CPU (resources.gpusPerNode 0)"
    if spec.model.uri is None and options.model_config is None:
        return None, "not estimated: the model comes from another FineTuneJob (give --model-config FILE)"
    try:
        config: dict[str, Any] = (
            read_file(options.model_config)
            if options.model_config
            else read_local(spec.model.uri or "", spec.model.revision, fetch=options.fetch)
        )
    except ConfigUnavailable as error:
        return None, f"not estimated: {error}"
    available, source = options.gpu_memory, "--gpu-memory" if options.gpu_memory else None
    if available is None:
        available = gpu_memory_from_labels(spec.resources.node_selector)
        source = "resources.nodeSelector" if available is not None else None
    try:
        found = verdict(spec, config, available, source)
    except ShapeError as error:
        return None, f"not estimated: {error}"
    return found, found.message()
