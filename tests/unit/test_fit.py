"""The fit estimate (kubetune.api.fit, kubetune.api.modelshape): counts from config.json, memory per GPU,
sharding, quantization, GPU memory from node labels, and what would fit. The measured side (real tensors on
CPU) is tests/trainer/test_fit_accuracy.py."""

from __future__ import annotations

import pytest

from kubetune.api.fit import (
    GIB,
    Settings,
    alternatives,
    estimate,
    estimate_shape,
    gpu_memory_from_labels,
    verdict,
)
from kubetune.api.modelshape import ShapeError, shape
from kubetune.api.v1alpha1 import TARGET_LOCAL, FineTuneJobSpec

# The published config.json values that decide the counts (the Hub's files, abridged).
LLAMA_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "tie_word_embeddings": False}  # fmt: skip
LLAMA_1B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
            "tie_word_embeddings": True}  # fmt: skip
MISTRAL_7B = {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8}  # fmt: skip
GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 50257,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_positions": 1024,
}
BERT_BASE = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
             "type_vocab_size": 2}  # fmt: skip
T5_SMALL = {"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64, "num_heads": 8, "d_ff": 2048,
            "num_layers": 6, "feed_forward_proj": "relu", "tie_word_embeddings": True}  # fmt: skip


@pytest.mark.parametrize(
    ("config", "task", "params"),
    [
        # the parameter counts the model cards (and transformers' models) give
        (LLAMA_8B, "causal-lm", 8_030_261_248),
        (LLAMA_1B, "causal-lm", 1_235_814_400),
        (MISTRAL_7B, "causal-lm", 7_241_732_096),
        (GPT2, "causal-lm", 124_439_808),
        (BERT_BASE, "sequence-classification", 109_483_778),
        (BERT_BASE, "masked-lm", 109_514_298),
        (T5_SMALL, "seq2seq", 60_506_624),
    ],
)
def test_counts_match_the_published_models(config, task, params):
    assert shape(config, task, 2).params == params


def test_an_unknown_architecture_is_counted_as_a_llama_with_a_note():
    found = shape({**LLAMA_1B, "model_type": "brandnew"})
    assert found.params == shape(LLAMA_1B).params
    assert "approximation" in found.notes[0]


def test_a_config_without_dimensions_is_refused():
    with pytest.raises(ShapeError, match="hidden_size"):
        shape({"model_type": "llama"})


def spec(**fields) -> FineTuneJobSpec:
    doc = {"model": {"uri": "hf://meta-llama/Llama-3.1-8B"}, "dataset": {"uri": "hf://x/y", "maxLength": 2048},
           "output": {"uri": "pvc://models/out"}}  # fmt: skip
    for key, value in fields.items():
        doc[key] = {**doc.get(key, {}), **value}
    return FineTuneJobSpec.model_validate(doc, context={"target": TARGET_LOCAL})


def test_full_fine_tuning_costs_sixteen_bytes_a_parameter_before_activations():
    found = estimate(spec(method={"type": "full"}), LLAMA_8B)
    p = 8_030_261_248
    # fp32 master weights, fp32 gradients, AdamW's two fp32 moments
    assert (found.weights, found.gradients, found.optimizer) == (4 * p, 4 * p, 8 * p)
    assert found.trainable == p


def test_lora_keeps_the_base_in_bf16_and_trains_fp32_adapters():
    found = estimate(spec(method={"type": "lora", "lora": {"r": 16}}), LLAMA_8B)
    # all-linear: q, k, v, o, gate, up, down of 32 blocks; r x (in + out) each
    per_block = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 2 + (14336 + 4096))
    assert found.trainable == 32 * per_block
    assert found.gradients == 4 * found.trainable
    assert found.optimizer == 8 * found.trainable
    assert found.weights == 2 * 8_030_261_248 + 4 * found.trainable


def test_qlora_stores_block_linears_in_about_half_a_byte():
    four = estimate(spec(method={"type": "qlora"}, training={"gradientCheckpointing": True}), LLAMA_8B)
    eight = estimate(
        spec(method={"type": "qlora", "quantization": {"bits": 8}}, training={"gradientCheckpointing": True}),
        LLAMA_8B,
    )
    block = shape(LLAMA_8B).block_linear_params
    rest = 8_030_261_248 - block  # embeddings, norms, lm_head: fp32 after prepare_model_for_kbit_training
    adapters = 4 * four.trainable
    assert four.weights - adapters == pytest.approx(block * 0.516 + rest * 4, rel=0.001)
    assert eight.weights - adapters == pytest.approx(block * 1.0 + rest * 4, rel=0.001)
    assert four.total < eight.total < estimate(spec(method={"type": "lora"}), LLAMA_8B).total


def test_optimizers_differ_in_state():
    adamw = estimate(spec(method={"type": "full"}), LLAMA_1B)
    eight = estimate(spec(method={"type": "full"}, training={"optimizer": "adamw-8bit"}), LLAMA_1B)
    adafactor = estimate(spec(method={"type": "full"}, training={"optimizer": "adafactor"}), LLAMA_1B)
    assert eight.optimizer == pytest.approx(adamw.optimizer / 4, rel=0.02)
    assert adafactor.optimizer < adamw.optimizer / 100


def test_gradient_checkpointing_and_smaller_batches_cut_activations():
    plain = estimate(spec(training={"batchSize": 8}), LLAMA_8B)
    checkpointed = estimate(spec(training={"batchSize": 8, "gradientCheckpointing": True}), LLAMA_8B)
    halved = estimate(spec(training={"batchSize": 4}), LLAMA_8B)
    assert checkpointed.activations < plain.activations / 3
    assert halved.activations == pytest.approx(plain.activations / 2, rel=0.01)
    assert checkpointed.weights == plain.weights


def test_fsdp_shards_weights_gradients_and_optimizer_but_not_activations():
    one = estimate(spec(method={"type": "full"}), LLAMA_8B)
    eight = estimate(
        spec(method={"type": "full"}, resources={"gpusPerNode": 8}, distributed={"strategy": "fsdp"}),
        LLAMA_8B,
    )
    ddp = estimate(spec(method={"type": "full"}, resources={"gpusPerNode": 8}), LLAMA_8B)
    assert eight.optimizer == one.optimizer // 8
    assert eight.gradients == one.gradients // 8
    assert one.weights / 8 < eight.weights < one.weights / 4  # a shard plus the blocks being gathered
    assert eight.activations == one.activations
    assert ddp.total == one.total  # DDP replicates everything


def test_deepspeed_stages_shard_step_by_step():
    def stage(n: int):
        return estimate(
            spec(method={"type": "full"}, resources={"gpusPerNode": 4},
                 distributed={"strategy": "deepspeed", "deepspeedStage": n}),
            LLAMA_1B,
        )  # fmt: skip

    one, two, three = stage(1), stage(2), stage(3)
    assert one.optimizer == two.optimizer == three.optimizer
    assert one.gradients > two.gradients == three.gradients
    assert one.weights == two.weights > three.weights


def test_dpo_with_full_fine_tuning_loads_a_reference_model():
    base = {"dataset": {"uri": "hf://x/y", "format": "preference"}, "method": {"type": "full"}}
    sft = estimate(spec(method={"type": "full"}), LLAMA_1B)
    dpo = estimate(spec(objective={"type": "dpo"}, **base), LLAMA_1B)
    assert dpo.weights == 2 * sft.weights
    assert dpo.activations > sft.activations  # chosen and rejected go through in one batch


@pytest.mark.parametrize(
    ("labels", "gib"),
    [
        ({"nvidia.com/gpu.memory": "81559"}, 79.65),
        ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, 40.0),
        ({"nvidia.com/gpu.product": "NVIDIA-L4"}, 22.49),
        ({"nvidia.com/gpu.product": "Tesla-T4"}, 15.0),
        ({"nvidia.com/gpu.product": "some-accelerator"}, None),
        ({}, None),
    ],
)
def test_gpu_memory_from_node_labels(labels, gib):
    found = gpu_memory_from_labels(labels)
    assert (None if found is None else round(found / GIB, 2)) == gib


def test_a_job_that_cannot_fit_says_the_numbers_and_what_would():
    job = spec(method={"type": "lora"}, training={"batchSize": 8})
    result = verdict(job, LLAMA_8B, 24 * GIB, "nvidia.com/gpu.memory=24576")
    assert result.fits is False
    message = result.message()
    assert message.startswith(f"needs ~{round(result.estimate.total / GIB, 2):g} GiB per GPU (weights ")
    assert "24 GiB available (nvidia.com/gpu.memory=24576): use " in message
    # the activations of 8 x 2048 tokens are what does not fit: a smaller batch with checkpointing does
    assert (
        "use batchSize 2 with gradient checkpointing (gradientAccumulationSteps x4 keeps the effective "
        in message
    )
    # every alternative named fits, and says by how much
    assert result.alternatives and all("GiB)" in a for a in result.alternatives)
    for text in result.alternatives:
        assert float(text.rsplit("~", 1)[1].split(" ")[0]) <= 24


def test_full_fine_tuning_of_8b_on_one_80g_gpu_is_told_to_use_adapters_or_sharding():
    s = Settings(method="full", batch_size=1, seq_len=512, gradient_checkpointing=True)
    big = shape(LLAMA_8B)
    assert estimate_shape(big, s).total > 120 * GIB  # 16 bytes per parameter
    found = alternatives(big, s, 80 * GIB, limit=5)
    assert [a.split(" (~")[0] for a in found] == [
        "method qlora (4-bit) with gradient checkpointing",
        "method lora with gradient checkpointing",
        "optimizer adamw-8bit",
        "2 GPUs per node with distributed.strategy fsdp",
    ]
    for text in found:
        assert float(text.rsplit("~", 1)[1].split(" ")[0]) <= 80


def test_a_job_that_fits_and_unknown_memory():
    small = verdict(spec(), LLAMA_1B, 80 * GIB)
    assert small.fits is True and "80 GiB available" in small.message()
    unknown = verdict(spec(), LLAMA_1B, None)
    assert unknown.fits is None and "unknown" in unknown.message()
