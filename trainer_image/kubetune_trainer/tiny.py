"""Tiny random-weight models and a tokenizer trained on the fly, for `make demo` and the CPU tests.

Nothing here reaches a hub: the tokenizer is a small BPE trained on the given corpus and the models are
built from configs (Llama, GPT-2, T5, BERT) with a few thousand parameters per layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]


def build_tokenizer(corpus: Iterable[str], path: str | Path, vocab_size: int = 600):
    """Train a byte-fallback-free BPE (Metaspace, like sentencepiece) on corpus and save it as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=1)
    tok.train_from_iterator(list(corpus), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A </s> $B",
        special_tokens=[("<s>", bos), ("</s>", tok.token_to_id("</s>"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    return fast


def build_model(
    arch: str,
    tokenizer,
    path: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    num_labels: int | None = None,
    seed: int = 0,
    task: str | None = None,
):
    """A random-weight model of the architecture, sized for the tokenizer, saved with it in path."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config: tf.PreTrainedConfig
    if arch == "llama":
        config = tf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **ids,
        )
    elif arch == "gpt2":
        config = tf.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=256, **ids
        )
    elif arch == "t5":
        config = tf.T5Config(
            vocab_size=vocab,
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=hidden * 2,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            **ids,
        )
        # not a declared T5Config field (transformers 5 configs are typed dataclasses): set it as an attribute
        config.decoder_start_token_id = tokenizer.pad_token_id
    elif arch == "bert":
        config = tf.BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 2,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch}")
    if num_labels:
        config.num_labels = num_labels
    task = task or {"t5": "seq2seq", "bert": "sequence-classification"}.get(arch, "causal-lm")
    auto = {
        "causal-lm": tf.AutoModelForCausalLM,
        "seq2seq": tf.AutoModelForSeq2SeqLM,
        "sequence-classification": tf.AutoModelForSequenceClassification,
        "token-classification": tf.AutoModelForTokenClassification,
        "base": tf.AutoModel,
    }[task]
    model = auto.from_config(config)
    path = Path(path)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model
