"""One sample prediction from the trained model, for the local run's summary."""

from __future__ import annotations

from typing import Any

from . import mlm, qa


def sample_prediction(
    task: str, model, tokenizer, samples: list, label_names: list[str] | None = None, max_new_tokens: int = 24
) -> dict[str, Any] | None:
    """{input, output, expected} for the first held-out sample, or None when there is none."""
    import torch

    if not samples:
        return None
    sample = samples[0]
    if task == "masked-lm":
        return mlm.sample_prediction(model, tokenizer, sample)
    if task == "question-answering":
        return qa.sample_prediction(model, tokenizer, sample)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        if task in ("causal-lm", "seq2seq"):
            if task == "causal-lm" and sample.prompt_ids:
                ids = sample.prompt_ids
            else:
                ids = tokenizer(sample.prompt, add_special_tokens=True)["input_ids"]
            out = model.generate(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            generated = out[0][len(ids) :] if task == "causal-lm" else out[0]
            return {
                "input": sample.prompt,
                "output": tokenizer.decode(generated, skip_special_tokens=True),
                "expected": sample.reference,
            }
        if task == "sequence-classification":
            enc = tokenizer(sample.prompt, return_tensors="pt", truncation=True).to(device)
            pred = int(model(**enc).logits.argmax(-1)[0])
            name = label_names[pred] if label_names and pred < len(label_names) else str(pred)
            return {"input": sample.prompt, "output": name, "expected": sample.reference}
        words = sample.prompt.split()
        enc = tokenizer(words, is_split_into_words=True, return_tensors="pt", truncation=True)
        word_ids = enc.word_ids()
        preds = model(**enc.to(device)).logits.argmax(-1)[0].tolist()
        tags, seen = [], set()
        for position, word in enumerate(word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                tag = preds[position]
                tags.append(label_names[tag] if label_names and tag < len(label_names) else str(tag))
        return {"input": sample.prompt, "output": " ".join(tags), "expected": sample.reference}
