"""SQuAD's exact match and F1 (the official script's definitions), on cases worked out by hand."""

from __future__ import annotations

import pytest

from kubetune_trainer import squad


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear and THE plum. ", "apple pear and plum"),
        ("Theatre", "theatre"),  # 'the' is removed only as a word
        ("1,000 km", "1000 km"),
        ("", ""),
    ],
)
def test_normalize_answer(text, normal):
    assert squad.normalize_answer(text) == normal


def test_exact_match_compares_normalised_text():
    assert squad.exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert squad.exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_f1_is_over_bags_of_tokens():
    assert squad.f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert squad.f1("in Paris in", "Paris in") == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))
    assert squad.f1("London", "Paris") == 0.0
    # no answer on either side scores 1 only when both are empty
    assert squad.f1("", "") == 1.0 and squad.f1("", "Paris") == 0.0 and squad.f1("Paris", "") == 0.0


def test_best_gold_answer_counts_and_no_gold_means_no_answer():
    golds = [["Denver Broncos", "The Denver Broncos", "Broncos"], [], ["Paris"]]
    predictions = ["denver broncos", "", "the city of Paris"]
    scores = squad.squad_scores(predictions, golds)
    assert scores["exact_match"] == pytest.approx(2 / 3)
    # F1 of the third: prediction tokens city of paris (3), gold paris (1) -> p 1/3, r 1 -> 0.5
    assert scores["f1"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert squad.squad_scores(["Berlin"], [[]]) == {"exact_match": 0.0, "f1": 0.0}


def test_only_the_asked_metrics_and_lengths_must_agree():
    assert set(squad.squad_scores(["a"], [["a"]], ["f1"])) == {"f1"}
    with pytest.raises(ValueError, match="1 predictions for 2 questions"):
        squad.squad_scores(["a"], [["a"], ["b"]])
