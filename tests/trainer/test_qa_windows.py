"""Question answering without training: long contexts cut into overlapping windows labelled with the answer's
tokens (or CLS), logits turned back into answer text, and bad SQuAD rows failing with the column named."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest

from kubetune.api.v1alpha1 import DatasetSpec, ModelSpec
from kubetune_trainer import data as data_mod
from kubetune_trainer import qa
from kubetune_trainer.errors import ConfigError, DataError

from .encoder_toy import encoder_corpus, qa_row
from .toy import write_jsonl

pytestmark = pytest.mark.trainer

LONG = {
    "question": "what is the pet ?",
    "context": "the cat saw a dog and the bird saw a horse near the red cat and a blue dog with the green horse "
    "and the pet is bird . a cat saw the yellow dog",
}
LONG["answers"] = {"text": ["bird"], "answer_start": [LONG["context"].index("pet is bird") + len("pet is ")]}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from kubetune_trainer import tiny

    return tiny.build_tokenizer(encoder_corpus(), tmp_path_factory.mktemp("qa-tok"), vocab_size=400)


def spec(**fields) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {"uri": "file:///data/qa.jsonl", "maxLength": 24, "docStride": 6, **fields}
    )


def windows(rows, tokenizer, **fields):
    ds = datasets.Dataset.from_list(rows)
    return qa.eval_features(ds, spec(**fields), tokenizer, "validation")


# ---------------------------------------------------------------- labelling one window (pure)

OFFSETS = [(0, 0), (0, 4), (5, 7), (0, 0), (0, 3), (4, 9), (9, 12), (13, 18), (0, 0)]
SEQUENCE_IDS = [None, 0, 0, None, 1, 1, 1, 1, None]  # [CLS] question [SEP] context [SEP]


@pytest.mark.parametrize(
    ("start_char", "end_char", "span"),
    [
        (4, 12, (5, 6)),  # two whole tokens
        (5, 12, (5, 6)),  # starts inside a token: that token
        (13, 18, (7, 7)),  # the last context token
        (0, 3, (4, 4)),  # the first context token
        (10, 20, (0, 0)),  # runs past the window: no answer here
    ],
)
def test_label_window(start_char, end_char, span):
    assert qa.label_window(OFFSETS, SEQUENCE_IDS, 1, 0, start_char, end_char) == span


def test_label_window_before_the_window_is_no_answer():
    shifted = [(o[0] + 100, o[1] + 100) if s == 1 else o for o, s in zip(OFFSETS, SEQUENCE_IDS, strict=True)]
    assert qa.label_window(shifted, SEQUENCE_IDS, 1, 0, 4, 12) == (0, 0)


# ---------------------------------------------------------------- windows of a real fast tokenizer


def test_long_context_is_cut_into_overlapping_windows_and_labelled(tokenizer):
    features, index = windows([LONG], tokenizer)
    assert len(features) >= 3, "the context should need several windows of 24 tokens"
    assert all(len(ids) <= 24 for ids in features["input_ids"])
    holding = 0
    previous = None
    for window, start, end in zip(
        index.windows, features["start_positions"], features["end_positions"], strict=True
    ):
        offsets = window["context_offsets"]
        context = [tuple(o) for o in offsets if o[0] >= 0]
        if previous is not None:  # consecutive windows share docStride context tokens
            assert previous[-6:] == context[:6]
        previous = context
        answer_start = LONG["answers"]["answer_start"][0]
        holds = context[0][0] <= answer_start and context[-1][1] >= answer_start + len("bird")
        if not holds:  # the answer is not (wholly) in this window
            assert start == end == window["cls_index"]
            continue
        holding += 1
        assert LONG["context"][offsets[start][0] : offsets[end][1]].strip() == "bird"
    assert 1 <= holding < len(features)  # some windows hold the answer, some do not
    assert set(window["example_index"] for window in index.windows) == {0}


def test_answer_cut_by_the_window_edge_is_no_answer_there(tokenizer):
    row = dict(LONG, answers={"text": [LONG["context"]], "answer_start": [0]})  # longer than any window
    features, index = windows([row], tokenizer)
    assert features["start_positions"] == [w["cls_index"] for w in index.windows]
    assert features["end_positions"] == features["start_positions"]


def test_unanswerable_question_is_labelled_cls_everywhere(tokenizer):
    row = dict(LONG, answers={"text": [], "answer_start": []})
    features, index = windows([row], tokenizer)
    assert set(features["start_positions"]) == {0} and set(features["end_positions"]) == {0}
    assert index.allows_no_answer and index.golds == [[]]


def test_question_too_long_for_the_window_names_the_fields(tokenizer):
    row = dict(LONG, question=" ".join(["what is the pet"] * 12))
    with pytest.raises(DataError, match="dataset.maxLength 24 .*dataset.docStride 6"):
        windows([row], tokenizer)


# ---------------------------------------------------------------- logits -> answers (pure)


def index_of(contexts, golds, windows_rows):
    return qa.EvalIndex(contexts, golds, datasets.Dataset.from_list(windows_rows))


def test_best_span_skips_question_tokens_backwards_and_too_long_spans():
    offsets = [(-1, -1), (-1, -1), (0, 3), (4, 7), (8, 11), (-1, -1)]
    start = np.array([9.0, 8.0, 1.0, 2.0, 0.0, 7.0])
    end = np.array([9.0, 8.0, 0.5, 0.0, 3.0, 7.0])
    assert qa.best_span(start, end, offsets) == (5.0, 4, 11)  # tokens 3..4; CLS and question are not answers
    # one token at most: token 4 (0.0 + 3.0) beats token 3 (2.0 + 0.0) and token 2 (1.0 + 0.5)
    assert qa.best_span(start, end, offsets, max_answer_tokens=1) == (3.0, 8, 11)
    # the best end before the best start is no span: the best forward one wins
    backwards = qa.best_span(np.array([0, 0, 0, 0, 9.0, 0]), np.array([0, 0, 9.0, 0, 1.0, 0]), offsets)
    assert backwards == (10.0, 8, 11)
    assert qa.best_span(start, end, [(-1, -1)] * 6) is None


def test_predict_answers_takes_the_best_window_and_no_answer_only_when_allowed():
    context = "red cat near blue dog"
    window_rows = [
        {"example_index": 0, "context_offsets": [[-1, -1], [0, 3], [4, 7], [-1, -1]], "cls_index": 0},
        {"example_index": 0, "context_offsets": [[-1, -1], [8, 12], [13, 17], [18, 21]], "cls_index": 0},
    ]
    start = np.array([[0.0, 1.0, 0.0, -9], [0.0, 0.0, 4.0, 0.0]])
    end = np.array([[0.0, 0.0, 1.0, -9], [0.0, 0.0, 0.0, 4.0]])
    assert qa.predict_answers(start, end, index_of([context], [["blue dog"]], window_rows)) == ["blue dog"]
    # a strong CLS score: "no answer" when the evaluation set has unanswerable questions, else the best span
    start[:, 0] = end[:, 0] = 10.0
    assert qa.predict_answers(start, end, index_of([context], [[]], window_rows)) == [""]
    assert qa.predict_answers(start, end, index_of([context], [["x"]], window_rows)) == ["blue dog"]
    with pytest.raises(ValueError, match="1 windows of logits for 2"):
        qa.predict_answers(start[:1], end[:1], index_of([context], [["x"]], window_rows))


# ---------------------------------------------------------------- data errors at data time


def prepare(tmp_path, rows, tokenizer, **fields):
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    dataset = DatasetSpec.model_validate({"uri": f"file://{path}", "maxLength": 32, "docStride": 8, **fields})
    model = ModelSpec.model_validate({"uri": "file:///m", "task": "question-answering"})
    return data_mod.prepare(dataset, model, tokenizer)


def test_prepare_detects_the_format_and_keeps_the_eval_index(tmp_path, tokenizer):
    rows = [qa_row(random.Random(i)) for i in range(20)]
    prepared = prepare(tmp_path, rows, tokenizer, evalFraction=0.25)
    assert prepared.format == "question-answering"
    assert {"input_ids", "start_positions", "end_positions"} <= set(prepared.train.column_names)
    assert "context_offsets" not in prepared.eval.column_names
    assert len(prepared.eval_index.windows) == len(prepared.eval) and len(prepared.eval_index.contexts) == 5
    assert prepared.samples[0].context and prepared.samples[0].reference


def test_dataset_without_answers_names_the_column(tmp_path, tokenizer):
    rows = [{k: v for k, v in qa_row(random.Random(i)).items() if k != "answers"} for i in range(4)]
    with pytest.raises(DataError, match="'answers'"):
        prepare(tmp_path, rows, tokenizer, format="question-answering")
    with pytest.raises(DataError, match="question-answering: question, context, answers"):
        prepare(tmp_path, rows, tokenizer)  # auto: the missing column is named among the expected ones


def test_answers_mapped_from_another_column_name(tmp_path, tokenizer):
    rows = [
        {("gold" if k == "answers" else k): v for k, v in qa_row(random.Random(i)).items()} for i in range(4)
    ]
    assert prepare(tmp_path, rows, tokenizer, columns={"answers": "gold"}).rows == 4


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({"text": ["cat"], "answer_start": [0]}, "answer_start 0 does not point at 'cat'"),
        ({"text": ["cat"]}, "must be \\{text: \\[...\\], answer_start"),
        ({"text": ["cat", "dog"], "answer_start": [3]}, "lists of the same length"),
        ("cat", "must be \\{text"),
    ],
)
def test_bad_answers_name_the_row_and_column(tmp_path, tokenizer, answers, message):
    rows = [qa_row(random.Random(1)), dict(qa_row(random.Random(2)), answers=answers)]
    with pytest.raises(DataError, match=f"column 'answers' in row 1 of split 'train'.*{message}"):
        prepare(tmp_path, rows, tokenizer)


def test_slow_tokenizer_is_refused_with_the_reason(tmp_path):
    from transformers import ByT5Tokenizer

    with pytest.raises(ConfigError, match="needs a fast tokenizer.*offset mapping"):
        prepare(tmp_path, [qa_row(random.Random(1))], ByT5Tokenizer())
