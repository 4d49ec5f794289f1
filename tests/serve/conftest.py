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


def _train(model, tokenizer, text: str, steps: int, lr: float) -> None:
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_tiny_lm(out: Path) -> tuple[Path, Path]:
    """A 2-layer GPT-2 with a word-level tokenizer, trained until it continues "hello" with BASE_TEXT,
    and a LoRA adapter trained to continue it with ADAPTER_TEXT. Returns (model_dir, adapter_dir)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(
        [BASE_TEXT, ADAPTER_TEXT, "the quick brown fox jumps over the lazy dog"],
        trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    # Decode word tokens with spaces between them.
    from tokenizers import decoders

    tokenizer.backend_tokenizer.decoder = decoders.WordPiece(prefix="##")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    _train(model, tokenizer, BASE_TEXT, steps=150, lr=1e-2)
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    lora = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0, fan_in_fan_out=True)
    )
    _train(lora, tokenizer, ADAPTER_TEXT, steps=150, lr=2e-2)
    adapter_dir = out / "adapter"
    lora.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    return model_dir, adapter_dir


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
