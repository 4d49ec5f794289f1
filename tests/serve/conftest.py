"""Fixtures for the ModelServe tests: a tiny causal LM (+ a LoRA adapter) trained on the fly, and a
TGI-protocol server on loopback serving them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BASE_TEXT = "hello kubetune world says the tiny model"
ADAPTER_TEXT = "hello kubetune support team is here to help"


def build_tiny_lm(out: Path) -> tuple[Path, Path]:
    """Models trained by the kubetune trainer (the code the trainer pods run), on CPU:

    1. a random-weight 2-layer GPT-2 with a tokenizer trained on the fly (kubetune_trainer.tiny),
    2. fine-tuned in full (method full) until it continues "hello" with BASE_TEXT -> the served model,
    3. a LoRA adapter (method lora) trained on top of it to continue with ADAPTER_TEXT -> the adapter.

    Returns (model_dir, adapter_dir): the trainers' result directories as they land on a PVC."""
    from kubetune_trainer import tiny
    from kubetune_trainer.train import run_training
    from tests.trainer.toy import job_config, write_jsonl

    tokenizer = tiny.build_tokenizer([BASE_TEXT, ADAPTER_TEXT] * 4, out / "tokenizer", vocab_size=120)
    tiny.build_model("gpt2", tokenizer, out / "random")
    write_jsonl(out / "base.jsonl", [{"text": BASE_TEXT}] * 32)
    write_jsonl(out / "adapter.jsonl", [{"text": ADAPTER_TEXT}] * 32)
    text = {"format": "text"}
    base = run_training(
        job_config(
            out,
            out / "random",
            out / "base.jsonl",
            name="tiny-sft",
            out_name="tiny-sft",
            method={"type": "full"},
            dataset=text,
            training={"maxSteps": 40, "learningRate": 5e-3, "batchSize": 8},
        )
    )
    assert base.result["kind"] == "full", base.result
    model_dir = Path(base.result["uri"][len("file://") :])
    lora = run_training(
        job_config(
            out,
            model_dir,
            out / "adapter.jsonl",
            name="tiny-support",
            out_name="tiny-support",
            dataset=text,
            training={"maxSteps": 40, "learningRate": 2e-2, "batchSize": 8},
        )
    )
    assert lora.result["kind"] == "adapter", lora.result
    return model_dir, Path(lora.result["uri"][len("file://") :])


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


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
        """Copy SOURCE to CLAIM/PATH; returns its pvc:// URI."""
        import shutil

        dest = self.root / claim_path
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return f"pvc://{claim_path}"

    def put_broken(self, claim_path: str, source: Path) -> str:
        """An adapter folder whose config is fine but whose weights are not (a truncated upload)."""
        uri = self.put(claim_path, source)
        for weights in (self.root / claim_path).glob("adapter_model.*"):
            weights.write_bytes(b"not a safetensors file")
        return uri


@pytest.fixture(scope="session")
def pvcs(tmp_path_factory, tiny_lm) -> PVCs:
    """Claim "models": support/v1 (the trained adapter), support/v2 (a new version of it), broken/v1."""
    _, adapter_dir = tiny_lm
    store = PVCs(tmp_path_factory.mktemp("pvcs"))
    store.put("models/support/v1", adapter_dir)
    store.put("models/support/v2", adapter_dir)
    store.put("models/support-b/v1", adapter_dir)
    store.put_broken("models/support/broken", adapter_dir)
    return store


@pytest.fixture(scope="session")
def vllm_backend(tiny_lm):
    from tests.support.vllm_server import Backend

    model_dir, _ = tiny_lm
    return Backend(model_dir)


@pytest.fixture
def vllm(tiny_lm, pvcs, vllm_backend):
    """A fresh vLLM-protocol server (no pod has loaded anything yet) serving the tiny model as "bot"; each
    pod starts with the adapter support=pvc://models/support/v1 (its --lora-modules)."""
    from tests.support.vllm_server import VLLMServer

    model_dir, _ = tiny_lm
    initial = {"support": "/mnt/pvc/models/support/v1"}
    with VLLMServer(
        model_dir, served_model_name="bot", path_map=pvcs.local, initial_adapters=lambda pod: dict(initial),
        backend=vllm_backend,
    ) as server:  # fmt: skip
        server.initial = initial  # type: ignore[attr-defined]
        yield server
