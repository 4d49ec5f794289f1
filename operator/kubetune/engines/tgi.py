"""Text Generation Inference (``engine: tgi``, the default): the launcher's environment and flags, and the
smoke test through TGI's own generate API.

- The model: ``MODEL_ID`` (a path inside the pod, or a Hub id the launcher downloads to
  HUGGINGFACE_HUB_CACHE, an emptyDir).
- Adapters: ``LORA_ADAPTERS``, ``NAME=PATH`` per adapter in the pod, the bare Hub id per Hub adapter (which
  the launcher downloads, and TGI serves under that id: clients pass it as adapter_id), loaded when the
  server starts (a change of the adapters is a new revision: a rolling update).
- The server listens on ``PORT`` 8080: the image's default (80) needs a capability the non-root pod does
  not have. ``/health`` answers once the model is loaded.
- ``spec.tgi`` maps to launcher flags (``--quantize``, ``--num-shard``, ...), then ``extraArgs`` as is.
- Smoke test: ``POST /`` with ``adapter_id`` per adapter (huggingface_hub's InferenceClient,
  reconcile/smoketest.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from kubetune.api.v1alpha1 import ModelServe, parse_uri
from kubetune.api.v1alpha1.modelserve import AdapterSource, TGISpec

from .base import HF_CACHE_DIR, PORT_NAME, Engine, Placement, Sources, hf_token_env, home_env

CONTAINER_NAME = "tgi"
# The TGI image sets PORT=80; a non-root process without capabilities cannot bind a port below 1024 (on
# most container runtimes), so the pods listen on 8080 (PORT is set explicitly; the Service keeps its port).
CONTAINER_PORT = 8080
DEFAULT_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.4"


def args(ms: ModelServe) -> list[str]:
    """The launcher's flags: JSON logs, then spec.tgi's settings, then spec.tgi.extraArgs."""
    tgi = ms.spec.tgi
    out = ["--json-output"]
    for flag, value in (
        ("--quantize", tgi.quantize),
        ("--num-shard", tgi.num_shard),
        ("--dtype", tgi.dtype),
        ("--max-input-tokens", tgi.max_input_tokens),
        ("--max-total-tokens", tgi.max_total_tokens),
        ("--max-batch-prefill-tokens", tgi.max_batch_prefill_tokens),
        ("--max-concurrent-requests", tgi.max_concurrent_requests),
    ):
        if value is not None:
            out += [flag, str(value)]
    return out + list(tgi.extra_args)


def env(placement: Placement) -> list[dict[str, Any]]:
    """The launcher's environment: the model, where to listen, the Hub cache, the adapters, a Hub token."""
    out: list[dict[str, Any]] = [
        {"name": "MODEL_ID", "value": placement.model},
        {"name": "PORT", "value": str(CONTAINER_PORT)},
        {"name": "HOSTNAME", "value": "0.0.0.0"},
        {"name": "HUGGINGFACE_HUB_CACHE", "value": HF_CACHE_DIR},
        *home_env(),
    ]
    if placement.adapters:
        out.append({"name": "LORA_ADAPTERS", "value": lora_adapters(placement)})
    return out + hf_token_env(placement)


def lora_adapters(placement: Placement) -> str:
    """LORA_ADAPTERS in the forms TGI's launcher reads: ``NAME=PATH`` for a folder in the pod (loaded from
    there), the bare Hub id for a Hub adapter. The launcher downloads only entries without '=' (an
    ``NAME=org/repo`` entry would be read as a local folder ``org/repo`` and fail), and serves a Hub adapter
    under its id."""
    return ",".join(path if is_hub_id(path) else f"{name}={path}" for name, path in placement.adapters)


def is_hub_id(path: str) -> bool:
    """A Placement path that is a Hub id (ORG/NAME), not a folder in the pod."""
    return not path.startswith("/")


def adapter_id(adapter: AdapterSource) -> str:
    """The adapter_id clients (and the smoke test) pass: the adapter's name, or a Hub adapter's Hub id."""
    if adapter.uri and adapter.uri.startswith("hf://"):
        return parse_uri(adapter.uri).hf_repo_id
    return adapter.name


class TGI(Engine):
    name = "tgi"
    title = "TGI"
    default_image = DEFAULT_IMAGE
    settings_model: ClassVar[type[TGISpec]] = TGISpec
    container_name = CONTAINER_NAME
    port = CONTAINER_PORT
    smoke_protocol = "tgi"

    def container(
        self, ms: ModelServe, placement: Placement, image: str, *, live_modules: Sequence[str] | None = None
    ) -> dict[str, Any]:
        return {
            "name": CONTAINER_NAME,
            "image": image,
            "args": args(ms),
            "env": env(placement),
            "ports": [{"name": PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        }

    def adapter_ids(self, ms: ModelServe) -> tuple[str, ...]:
        return tuple(adapter_id(a) for a in ms.spec.adapters)

    def revision_inputs(self, ms: ModelServe, sources: Sources, image: str) -> dict[str, Any]:
        return {
            "model": sources.model.uri if sources.model else None,
            "adapters": [f"{a.name}={a.uri}" for a in sources.adapters],
            "sources": sources.sources,
            "tgi": ms.spec.tgi.to_dict(),
            "image": image,
        }
