"""TGI's own definitions, as data: what its launcher accepts and refuses, and how its router answers.

TGI cannot run here (it needs a GPU and its Rust launcher), so the tests hold the operator to these facts,
read from TGI's source at tag v3.3.4, the version of the operator's default TGI image
(settings.DEFAULT_TGI_IMAGE); the launcher's arguments, its checks and the router's answers are the same up to
v3.3.7 (``git diff v3.3.4 v3.3.7 -- launcher router`` changes only formatting, a GPU count and OpenAPI
examples). Where each fact comes from is said beside it; when the default image moves, read them again.

- launcher/src/main.rs, ``struct Args``: every flag (clap ``long``) and its environment variable (clap
  ``env``: the field's name in upper case), its type, value set and default.
- launcher/src/main.rs, ``fn main``: the checks that stop the launcher before any shard starts.
- server/text_generation_server/cli.py, ``serve``: the shard's dtype/quantize rule.
- launcher/src/main.rs (the download loop) and server/text_generation_server/utils/adapter.py
  (``parse_lora_adapters``): how LORA_ADAPTERS is read.
- router/src/server.rs (``compat_generate``, ``run``), router/src/lib.rs (``Info``, ``ErrorResponse``) and
  server/.../flash_causal_lm.py (``ADAPTER_TO_INDEX.get(adapter_id, 0)``): the answers.
"""

from __future__ import annotations

TGI_VERSION = "3.3.4"
TGI_SOURCE = "github.com/huggingface/text-generation-inference at tag v3.3.4 (unchanged through v3.3.7)"

# ---- launcher/src/main.rs: enum Quantization, enum Dtype, enum KVCacheDtype, enum RopeScaling, UsageStatsLevel
QUANTIZE = frozenset({"awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes",
                      "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8"})  # fmt: skip
DTYPE = frozenset({"float16", "bfloat16"})
KV_CACHE_DTYPE = frozenset({"fp8_e4m3fn", "fp8_e5m2"})
ROPE_SCALING = frozenset({"linear", "dynamic"})
USAGE_STATS = frozenset({"on", "off", "no-stack"})

# ---- launcher/src/main.rs: struct Args. flag -> (type, value set or None). Types: "str", "int" (usize/u32/u16),
# "float" (f32), "bool" (a clap flag without a value: `bool`), "bool-value" (`Option<bool>`: takes true|false),
# "int-list" (comma separated), "str-multi" (`Vec<String>`: may repeat). Every one but --env also reads the
# environment variable named like the field in upper case (clap `env`), e.g. --max-input-tokens: MAX_INPUT_TOKENS.
LAUNCHER_FLAGS: dict[str, tuple[str, frozenset[str] | None]] = {
    "--model-id": ("str", None),
    "--revision": ("str", None),
    "--validation-workers": ("int", None),
    "--sharded": ("bool-value", None),
    "--num-shard": ("int", None),
    "--quantize": ("str", QUANTIZE),
    "--speculate": ("int", None),
    "--dtype": ("str", DTYPE),
    "--kv-cache-dtype": ("str", KV_CACHE_DTYPE),
    "--trust-remote-code": ("bool", None),
    "--max-concurrent-requests": ("int", None),
    "--max-best-of": ("int", None),
    "--max-stop-sequences": ("int", None),
    "--max-top-n-tokens": ("int", None),
    "--max-input-tokens": ("int", None),
    "--max-input-length": ("int", None),
    "--max-total-tokens": ("int", None),
    "--waiting-served-ratio": ("float", None),
    "--max-batch-prefill-tokens": ("int", None),
    "--max-batch-total-tokens": ("int", None),
    "--max-waiting-tokens": ("int", None),
    "--max-batch-size": ("int", None),
    "--cuda-graphs": ("int-list", None),
    "--hostname": ("str", None),
    "--port": ("int", None),
    "--prometheus-port": ("int", None),
    "--shard-uds-path": ("str", None),
    "--master-addr": ("str", None),
    "--master-port": ("int", None),
    "--huggingface-hub-cache": ("str", None),
    "--weights-cache-override": ("str", None),
    "--disable-custom-kernels": ("bool", None),
    "--cuda-memory-fraction": ("float", None),
    "--rope-scaling": ("str", ROPE_SCALING),
    "--rope-factor": ("float", None),
    "--json-output": ("bool", None),
    "--otlp-endpoint": ("str", None),
    "--otlp-service-name": ("str", None),
    "--cors-allow-origin": ("str-multi", None),
    "--api-key": ("str", None),
    "--watermark-gamma": ("float", None),
    "--watermark-delta": ("float", None),
    "--ngrok": ("bool", None),
    "--ngrok-authtoken": ("str", None),
    "--ngrok-edge": ("str", None),
    "--tokenizer-config-path": ("str", None),
    "--disable-grammar-support": ("bool", None),
    "--env": ("bool", None),
    "--max-client-batch-size": ("int", None),
    "--lora-adapters": ("str", None),
    "--usage-stats": ("str", USAGE_STATS),
    "--payload-limit": ("int", None),
    "--enable-prefill-logprobs": ("bool", None),
    "--graceful-termination-timeout": ("int", None),
}
SHORT_FLAGS = {
    "-p": "--port",
    "-e": "--env",
}  # clap `short` (prometheus_port and the timeout's clash: unused)
NO_ENV = frozenset({"--env"})


def env_name(flag: str) -> str:
    """The environment variable clap reads for FLAG (``#[clap(long, env)]``: the field name in upper case)."""
    return flag.removeprefix("--").replace("-", "_").upper()


LAUNCHER_ENV = frozenset(env_name(f) for f in LAUNCHER_FLAGS if f not in NO_ENV)

# ---- fn main: the launcher's own refusals, in its words (before any shard or download starts)
REFUSALS = {
    "input-vs-input-length": "Both `max_input_tokens` ({a}) and `max_input_length` ({b}) are set.",
    "input-vs-total": "`max_input_tokens`({a}) must be < `max_total_tokens`({b})",
    "total-vs-batch-total": "`max_total_tokens` must be <= `max_batch_total_tokens`. Given: {a} and {b}",
    "exl2-sharded": "Sharding is currently not supported with `exl2` quantization",
    "validation-workers": "`validation_workers` must be > 0",
}
# server/text_generation_server/cli.py serve(): each shard refuses a dtype with any other quantization.
DTYPE_WITH_QUANTIZE = frozenset({None, "bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4"})
DTYPE_QUANTIZE_REFUSAL = (
    "Only 1 can be set between `dtype` and `quantize`, as they both decide how goes the final model."
)

# ---- LORA_ADAPTERS: comma separated entries, each ``ID``, ``ID=PATH`` or ``ID@REVISION`` (adapter.py's
# ^([^=@]+)(?:=([^@]+))?(?:@(.+))?$, at most one '=' and one '@'). The launcher downloads from the Hub only
# the entries WITHOUT '=' (main.rs: "skip download if a path is provided"); an ``ID=PATH`` entry is loaded
# from PATH as a local folder. Clients select an adapter by its ID (parameters.adapter_id).
LORA_ADAPTER_ENTRY = r"^([^=@]+)(?:=([^@]+))?(?:@(.+))?$"

# ---- the router's answers
# POST / (compat_generate): return_full_text defaults to true unless the model's pipeline tag says otherwise
# (`compat_return_full_text`: true when there is no pipeline tag, e.g. a local model folder, or when it is
# "text-generation"), and the answer is a list of one GenerateResponse. POST /generate defaults it to false.
COMPAT_RETURN_FULL_TEXT_DEFAULT = True
GENERATE_RETURN_FULL_TEXT_DEFAULT = False
# An adapter_id the server has not loaded selects the base model (index 0); no error.
UNKNOWN_ADAPTER_SERVES_BASE_MODEL = True
BASE_MODEL_ADAPTER_ID = "__base_model__"
# router/src/lib.rs struct Info: the fields of GET /info (model_dtype and model_device_type are commented out).
INFO_FIELDS = frozenset({"model_id", "model_sha", "model_pipeline_tag", "max_concurrent_requests", "max_best_of",
                         "max_stop_sequences", "max_input_tokens", "max_total_tokens", "validation_workers",
                         "max_client_batch_size", "router", "version", "sha", "docker_label"})  # fmt: skip
ERROR_FIELDS = frozenset({"error", "error_type"})
