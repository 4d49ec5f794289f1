"""The plain LM head kubetune's SFTTrainer uses where TRL's fused head has no Triton kernel (CPU): the same
loss, the same gradients and the same logged metrics as TRL's fused head, on a packed batch of a tiny Llama
with LoRA and on prompt tuning, through the trainer the pods run (kubetune_trainer.train.run_training)."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.packing import RowPackedCollator
from kubetune_trainer.sft_head import FUSED_HEAD_ENV, SFTTrainer, plain_head_wanted
from kubetune_trainer.train import run_training

from .toy import job_config

pytestmark = pytest.mark.trainer


def loss_grads_metrics(trainer, batch, seed: int = 0):
    """One training-mode loss of BATCH: (loss, gradients of the trainable parameters, logged metrics)."""
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    torch.manual_seed(seed)  # the same LoRA dropout masks for both heads
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize(
    "spec",
    [
        {"dataset": {"packing": True, "format": "text", "maxLength": 48}},
        # PEFT prompt tuning puts virtual tokens in front of the logits (no packing with it)
        {
            "dataset": {"format": "text", "maxLength": 48},
            "method": {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 4}},
        },
    ],
    ids=["lora-packed", "prompt-tuning"],
)
def test_plain_head_matches_trls_fused_head(assets, datasets_dir, tmp_path, monkeypatch, spec):
    config = job_config(
        tmp_path,
        assets["llama"],
        datasets_dir / "text.jsonl",
        training={"maxSteps": 2, "batchSize": 4},
        **spec,
    )
    trainer = run_training(config).trainer
    assert isinstance(trainer, SFTTrainer)
    assert isinstance(trainer.data_collator, RowPackedCollator) == spec["dataset"].get("packing", False)
    assert plain_head_wanted(trainer.args.device)  # CPU: no Triton kernel for TRL's head
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    if spec["dataset"].get("packing"):
        assert (batch["labels"] == -100).any()  # document starts / padding are not predicted

    calls = {"plain": 0}
    log_metrics = SFTTrainer._log_token_metrics

    def counting(self, *args):
        calls["plain"] += 1
        return log_metrics(self, *args)

    monkeypatch.setattr(SFTTrainer, "_log_token_metrics", counting)
    monkeypatch.setenv(FUSED_HEAD_ENV, "always")
    fused = loss_grads_metrics(trainer, batch)
    assert calls["plain"] == 0  # TRL's own compute_loss ran
    monkeypatch.setenv(FUSED_HEAD_ENV, "auto")
    plain = loss_grads_metrics(trainer, batch)
    assert calls["plain"] == 1

    torch.testing.assert_close(plain[0], fused[0], atol=1e-5, rtol=1e-5)
    assert plain[1].keys() == fused[1].keys() and plain[1]
    for name, grad in plain[1].items():
        torch.testing.assert_close(grad, fused[1][name], atol=1e-6, rtol=1e-4, msg=name)
    # entropy (every token sampled in a batch this small) and accuracy, as TRL logs them
    assert plain[2].keys() == fused[2].keys() == {"entropy", "mean_token_accuracy"}
    assert plain[2]["mean_token_accuracy"] == pytest.approx(fused[2]["mean_token_accuracy"], abs=1e-9)
    # float32 sums in another order (TRL folds vocabulary tiles online): within 1e-4 of each other
    assert plain[2]["entropy"] == pytest.approx(fused[2]["entropy"], rel=1e-4)


def test_evaluation_and_outputs_keep_trls_path(assets, datasets_dir, tmp_path):
    config = job_config(
        tmp_path,
        assets["llama"],
        datasets_dir / "text.jsonl",
        dataset={"packing": True, "format": "text", "maxLength": 48},
        training={"maxSteps": 1, "batchSize": 4},
    )
    trainer = run_training(config).trainer
    model = trainer.model
    model.eval()
    assert not trainer._plain_head(model, return_outputs=False)  # evaluation: TRL's path
    model.train()
    assert not trainer._plain_head(model, return_outputs=True)  # logits asked for: TRL's path
    assert trainer._plain_head(model, return_outputs=False)
