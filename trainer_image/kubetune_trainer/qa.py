"""Extractive question answering on SQuAD-style rows (question, context, answers {text[], answer_start[]}).

Training: each question with its context becomes one or more windows of at most dataset.maxLength tokens;
a context too long for one window is split into windows that share dataset.docStride tokens. The offset
mapping (which characters of the context each token covers; only fast tokenizers give it) turns the
answer's characters into the token span the model learns (start_positions, end_positions). A window that
does not hold the whole answer, and a question without answers (SQuAD 2.0), is labelled "no answer":
start = end = the CLS token.

Evaluation: the same windows; per window the best valid span (inside the context, end >= start, at most
MAX_ANSWER_TOKENS) from the N_BEST start and end logits, the best span over the question's windows, its
characters cut from the context; with unanswerable questions in the evaluation set, "no answer" wins when
the CLS score beats the best span. Scored with SQuAD's exact match and F1 (squad.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubetune.api.v1alpha1 import DatasetSpec

from . import squad
from .errors import ConfigError, DataError

COLUMNS = ("question", "context", "answers")
LABEL_NAMES = ("start_positions", "end_positions")
N_BEST = 20  # start and end candidates per window
MAX_ANSWER_TOKENS = 30  # longer spans are never predicted (as in the SQuAD reference scripts)
WINDOW_COLUMNS = ("example_index", "context_offsets", "cls_index")  # what post-processing needs per window
OUTSIDE = (-1, -1)  # offsets of a token that is not part of the context (question, special, padding)


def require_fast_tokenizer(tokenizer, model_uri: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"model.task question-answering needs a fast tokenizer: its offset mapping ties tokens to the "
            f"characters of the context. The tokenizer of {model_uri} ({type(tokenizer).__name__}) is a slow "
            "(Python) one; use a model that ships a tokenizer.json, or convert its tokenizer "
            "(AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(...)) and train from that copy"
        )


def answers_of(row: dict, index: int, split: str, uri: str) -> tuple[list[str], list[int]]:
    """The row's gold answers (texts, character starts), checked against its context."""
    for column in ("question", "context"):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            what = "empty" if not value else f"a {type(value).__name__}, not text"
            raise DataError(f"{uri}: column '{column}' is {what} in row {index} of split '{split}'")
    context, answers = row["context"], row.get("answers")
    where = f"{uri}: column 'answers' in row {index} of split '{split}'"
    if not isinstance(answers, dict) or "text" not in answers or "answer_start" not in answers:
        raise DataError(
            f"{where} must be {{text: [...], answer_start: [...]}} as in SQuAD (empty lists when the context "
            f"holds no answer), not {str(answers)[:80]!r}"
        )
    texts, starts = answers["text"], answers["answer_start"]
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{where}: 'text' and 'answer_start' must be lists of the same length")
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int):
            raise DataError(f"{where}: each answer needs a non-empty text and an integer answer_start")
        found = context[start : start + len(text)]
        if found != text:
            raise DataError(
                f"{where}: answer_start {start} does not point at {text!r} in the context (it reads {found!r}); "
                "answer_start counts characters of the context from 0"
            )
    return texts, starts


def label_window(
    offsets: Sequence[Sequence[int]],
    sequence_ids: Sequence[int | None],
    context_id: int,
    cls_index: int,
    start_char: int,
    end_char: int,
) -> tuple[int, int]:
    """Token (start, end) of the answer characters [start_char, end_char) in one window; (cls, cls) when the
    window's part of the context does not hold the whole answer."""
    context = [i for i, s in enumerate(sequence_ids) if s == context_id]
    if not context:
        return cls_index, cls_index
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return cls_index, cls_index
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def cls_index_of(input_ids: Sequence[int], tokenizer) -> int:
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def encode_windows(
    tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int, where: str
):
    """Tokenize question/context pairs into overlapping windows; returns (encoding, context's sequence id)."""
    pad_right = tokenizer.padding_side == "right"  # the context goes where the padding is not
    questions = [q.lstrip() for q in questions]  # leading spaces only waste room in the window
    try:
        encoding = tokenizer(
            questions if pad_right else contexts,
            contexts if pad_right else questions,
            truncation="only_second" if pad_right else "only_first",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
    except Exception as error:
        raise DataError(
            f"{where}: cannot split the contexts into windows of dataset.maxLength {max_length} tokens that share "
            f"dataset.docStride {stride} tokens ({type(error).__name__}: {error}); the question, the special "
            "tokens and docStride must leave room for the context: lower docStride or raise maxLength"
        ) from None
    return encoding, 1 if pad_right else 0


@dataclass(frozen=True)
class Windows:
    """How rows are cut into windows: at most max_length tokens, consecutive windows share stride tokens."""

    uri: str
    split: str
    max_length: int
    stride: int

    @classmethod
    def of(cls, spec: DatasetSpec, split: str) -> Windows:
        return cls(spec.uri, split, spec.max_length, spec.doc_stride)


def _windows(batch: dict, indices: list[int], how: Windows, tokenizer, *, for_eval: bool) -> dict:
    rows = [{key: batch[key][i] for key in batch} for i in range(len(indices))]
    answers = [answers_of(row, index, how.split, how.uri) for row, index in zip(rows, indices, strict=True)]
    encoding, context_id = encode_windows(
        tokenizer,
        [row["question"] for row in rows],
        [row["context"] for row in rows],
        how.max_length,
        how.stride,
        f"{how.uri} (split '{how.split}')",
    )
    sample_of = encoding.pop("overflow_to_sample_mapping")
    offsets_of = encoding.pop("offset_mapping")
    out: dict[str, list] = {key: list(value) for key, value in encoding.items()}
    out.update(start_positions=[], end_positions=[])
    if for_eval:
        out.update({column: [] for column in WINDOW_COLUMNS})
    for window, offsets in enumerate(offsets_of):
        sequence_ids = encoding.sequence_ids(window)
        cls = cls_index_of(encoding["input_ids"][window], tokenizer)
        texts, starts = answers[sample_of[window]]
        if texts:
            start, end = label_window(
                offsets, sequence_ids, context_id, cls, starts[0], starts[0] + len(texts[0])
            )
        else:
            start = end = cls
        out["start_positions"].append(start)
        out["end_positions"].append(end)
        if for_eval:
            out["example_index"].append(indices[sample_of[window]])
            out["context_offsets"].append(
                [
                    list(o) if s == context_id else list(OUTSIDE)
                    for o, s in zip(offsets, sequence_ids, strict=True)
                ]
            )
            out["cls_index"].append(cls)
    return out


def train_features(ds, spec: DatasetSpec, tokenizer, split: str):
    """Windows with start_positions/end_positions for training (and for the evaluation loss)."""
    how = Windows.of(spec, split)
    return ds.map(
        lambda batch, indices: _windows(batch, indices, how, tokenizer, for_eval=False),
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        desc=f"Windows of {split}",
    )


@dataclass
class EvalIndex:
    """What turns the evaluation windows' logits back into answers: the questions' contexts and gold answers,
    and per window (in the order of the evaluation features) its question, context offsets and CLS index."""

    contexts: list[str]
    golds: list[list[str]]
    windows: Any  # datasets.Dataset with WINDOW_COLUMNS

    @property
    def allows_no_answer(self) -> bool:
        """SQuAD 2.0 style: some questions have no answer, so "no answer" may be predicted."""
        return any(not gold for gold in self.golds)


def eval_features(ds, spec: DatasetSpec, tokenizer, split: str):
    """(windows for the Trainer, EvalIndex for post-processing)."""
    return _eval_windows(ds, Windows.of(spec, split), tokenizer)


def _eval_windows(ds, how: Windows, tokenizer):
    windows = ds.map(
        lambda batch, indices: _windows(batch, indices, how, tokenizer, for_eval=True),
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        desc=f"Windows of {how.split}",
    )
    index = EvalIndex(
        contexts=list(ds["context"]),
        golds=[list(a["text"]) for a in ds["answers"]],
        windows=windows.select_columns(list(WINDOW_COLUMNS)),
    )
    return windows.remove_columns(list(WINDOW_COLUMNS)), index


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Sequence[Sequence[int]],
    n_best: int = N_BEST,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> tuple[float, int, int] | None:
    """(score, start char, end char) of a window's best span inside the context, or None when there is none."""
    n = len(offsets)
    start_logits, end_logits = np.asarray(start_logits[:n]), np.asarray(end_logits[:n])
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    best = None
    for s in starts:
        if offsets[s][0] < 0:
            continue
        for e in ends:
            if offsets[e][0] < 0 or e < s or e - s + 1 > max_answer_tokens:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(offsets[s][0]), int(offsets[e][1]))
    return best


def predict_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    index: EvalIndex,
    n_best: int = N_BEST,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
    allow_no_answer: bool | None = None,
) -> list[str]:
    """One answer per question ("" for no answer) from the logits of all evaluation windows; "no answer" is
    possible when allow_no_answer (default: when some gold answers are empty, as in SQuAD 2.0)."""
    if allow_no_answer is None:
        allow_no_answer = index.allows_no_answer
    if len(start_logits) != len(index.windows):
        raise ValueError(f"{len(start_logits)} windows of logits for {len(index.windows)} evaluation windows")
    best: dict[int, tuple[float, int, int]] = {}
    null: dict[int, float] = {}
    for w, window in enumerate(index.windows):
        example, cls = window["example_index"], window["cls_index"]
        span = best_span(start_logits[w], end_logits[w], window["context_offsets"], n_best, max_answer_tokens)
        if span is not None and (example not in best or span[0] > best[example][0]):
            best[example] = span
        null_score = float(start_logits[w][cls] + end_logits[w][cls])
        null[example] = min(null.get(example, null_score), null_score)
    answers = []
    for example, context in enumerate(index.contexts):
        span = best.get(example)
        if span is None or (allow_no_answer and null.get(example, -np.inf) > span[0]):
            answers.append("")
        else:
            answers.append(context[span[1] : span[2]].strip())
    return answers


def compute_metrics_for(names: Sequence[str], index: EvalIndex | None) -> Callable | None:
    """A Trainer compute_metrics that scores the predicted answer spans with SQuAD's exact match and F1."""
    wanted = [n for n in names if n in ("exact-match", "f1")]
    if not wanted or index is None:
        return None

    def compute(eval_pred) -> dict[str, float]:
        start_logits, end_logits = eval_pred.predictions[:2]
        return squad.squad_scores(predict_answers(start_logits, end_logits, index), index.golds, wanted)

    return compute


def build_trainer(spec, common: dict, tokenizer, data):
    """transformers.Trainer on the windows; labels are start_positions/end_positions (also under PEFT)."""
    import transformers

    trainer = transformers.Trainer(
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_for(spec.training.metrics, data.eval_index),
        **common,
    )
    trainer.label_names = list(LABEL_NAMES)  # a PEFT wrapper hides them from the Trainer's signature check
    return trainer


def answer_questions(
    model,
    tokenizer,
    questions: list[str],
    contexts: list[str],
    max_length: int,
    stride: int,
    batch_size: int = 16,
) -> list[str]:
    """Answers of a trained model for questions about contexts (the evaluation's windows and post-processing)."""
    import datasets
    import torch

    rows = datasets.Dataset.from_dict(
        {
            "question": questions,
            "context": contexts,
            "answers": [{"text": [], "answer_start": []} for _ in questions],
        }
    )
    features, index = _eval_windows(
        rows, Windows("the questions", "questions", max_length, stride), tokenizer
    )
    device = next(model.parameters()).device
    model.eval()
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    names = [c for c in features.column_names if c not in LABEL_NAMES]
    for first in range(0, len(features), batch_size):
        batch = tokenizer.pad(features.select_columns(names)[first : first + batch_size], return_tensors="pt")
        with torch.no_grad():
            out = model(**{k: v.to(device) for k, v in batch.items()})
        for logits, bucket in ((out.start_logits, starts), (out.end_logits, ends)):
            padded = torch.full((logits.shape[0], max_length), -1e4)  # one width for all batches
            padded[:, : logits.shape[1]] = logits.float().cpu()
            bucket.extend(padded.numpy())
    return predict_answers(np.stack(starts), np.stack(ends), index, allow_no_answer=False)


def sample_prediction(model, tokenizer, sample) -> dict[str, Any]:
    """{input, output, expected} for one held-out question (the local run's summary)."""
    limit = min(512, getattr(model.config, "max_position_embeddings", 512) or 512)
    [answer] = answer_questions(model, tokenizer, [sample.prompt], [sample.context or ""], limit, limit // 4)
    return {"input": f"{sample.prompt} | {sample.context}", "output": answer, "expected": sample.reference}
