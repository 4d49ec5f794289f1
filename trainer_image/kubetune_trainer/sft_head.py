"""The SFT loss without TRL's fused LM head where that head has no kernel (CPU and other non-Triton devices).

TRL's ``SFTTrainer`` always patches the model with a fused LM head (``trl.kernels.ChunkedLogProbFunction``):
on GPUs a Triton kernel folds vocabulary tiles into the log-probabilities without materialising the logits,
which saves memory. Without Triton the same fold runs as a dozen torch operations per tile, computes entropy,
accuracy and argmax statistics on every tile, and the backward recomputes the vocabulary projection: measured
on the CPU benchmark (hack/bench_trainer.py, 4,096 tokens x 4,000 vocabulary) its forward + backward took
about 4x a plain ``logits -> cross_entropy``, a fifth of a packed training step.

``SFTTrainer`` here keeps TRL's trainer and swaps only ``compute_loss`` on such devices: the model's own
forward with labels (transformers' causal-LM loss: shifted, -100 ignored, ``num_items_in_batch`` honoured, the
same loss TRL's head computes), and the two metrics TRL logs (``entropy``, ``mean_token_accuracy``) from the
logits without gradients (the entropy from a sample of at most 512 tokens per step). Every other case (a Triton device, MoE auxiliary losses, a custom loss, label
smoothing, DFT, sequence parallelism, evaluation with logits) goes to TRL unchanged.
``KUBETUNE_FUSED_LM_HEAD=always`` keeps TRL's head everywhere.
"""

from __future__ import annotations

import os

import torch
from trl import SFTConfig
from trl import SFTTrainer as _TRLSFTTrainer
from trl.kernels.chunked_logprob import _use_triton

FUSED_HEAD_ENV = "KUBETUNE_FUSED_LM_HEAD"
ENTROPY_SAMPLE = 512  # tokens per step whose entropy is logged


def plain_head_wanted(device: torch.device) -> bool:
    """Whether the plain head is the faster one on DEVICE (no Triton kernel for TRL's) and not turned off."""
    return os.environ.get(FUSED_HEAD_ENV, "auto").strip().lower() != "always" and not _use_triton(device)


class SFTTrainer(_TRLSFTTrainer):
    """TRL's SFTTrainer with the plain LM head on devices without Triton (see the module's docstring)."""

    def _plain_head(self, model, return_outputs: bool) -> bool:
        sp = getattr(self.accelerator, "parallelism_config", None)
        return (
            model.training
            and not return_outputs
            and plain_head_wanted(self.args.device)
            and not self.aux_loss_enabled
            and self.compute_loss_func is None
            and self.label_smoother is None
            and isinstance(self.args, SFTConfig)
            and self.args.loss_type == "nll"
            and not (sp is not None and getattr(sp, "sp_enabled", False))
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._plain_head(model, return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        labels = inputs["labels"]
        # transformers' Trainer.compute_loss: the model's own loss (num_items_in_batch passed to it, the
        # cross-device token averaging), as TRL's fused head would give it
        loss, outputs = super(_TRLSFTTrainer, self).compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        self._log_token_metrics(outputs.logits, labels, inputs)
        return loss

    @torch.no_grad()
    def _log_token_metrics(self, logits: torch.Tensor, labels: torch.Tensor, inputs) -> None:
        """The metrics TRL's compute_loss logs, from the logits: entropy and accuracy of the predicted tokens
        (shifted, -100 ignored), and the number of tokens seen."""
        # Prompt tuning (PEFT) puts its virtual tokens in front of the inputs: the last positions are the labels'
        logits = logits[:, -labels.shape[1] :]
        shift_labels = labels[:, 1:]
        mask = shift_labels != -100
        num_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
        # Reductions over the vocabulary first, then the (small) per-token results are shifted and masked:
        # selecting the scored rows of the logits first would copy them all (64 MB for 4,096 x 4,000).
        correct = ((logits[:, :-1].argmax(-1) == shift_labels) & mask).sum()
        where = mask.nonzero()
        if len(where):
            # The entropy of an evenly spaced sample of at most ENTROPY_SAMPLE scored tokens (the softmax over
            # the whole vocabulary of every token cost ~8% of a CPU step, for a logged figure), scaled to all
            sample = where[:: max(1, len(where) // ENTROPY_SAMPLE)]
            log_p = torch.log_softmax(logits[sample[:, 0], sample[:, 1]].float(), dim=-1)
            entropy = -(log_p.exp() * log_p).sum() * (len(where) / len(sample))
        else:
            entropy = torch.zeros((), device=logits.device)
        entropy_sum = self.accelerator.gather_for_metrics(entropy).sum()
        num_correct = self.accelerator.gather_for_metrics(correct).sum()
        metrics = self._metrics["train"]
        metrics["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        # Tokens the model computed on (TRL counts attention_mask, or a padding-free row's length)
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:
            local = torch.tensor(inputs["input_ids"].numel(), device=labels.device)
        self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]


__all__ = ["FUSED_HEAD_ENV", "SFTTrainer", "plain_head_wanted"]
