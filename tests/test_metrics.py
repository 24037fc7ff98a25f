"""Scoring: normalisation, option letters, POPE metrics, on hand-made predictions."""

import pytest

from mmtok_cli.metrics import is_correct, normalize, options, pope, score, yes_no


def test_normalize():
    assert normalize("The  Two red Circles!") == "2 red circles"
    assert normalize("An apple, a day.") == "apple day"
    assert normalize("three") == normalize("3") == "3"


def test_yes_no_by_first_word():
    assert yes_no("Yes, there is.") == "yes"
    assert yes_no("no") == "no"
    assert yes_no("There is one") is None


@pytest.mark.parametrize("prediction, answer, question, right", [
    ("Red.", "red", "What colour?", True),
    ("two", "2", "How many?", True),
    ("a square", "square", "What shape?", True),
    ("dark red", "red", "What colour?", False),
    ("Yes, it is.", "yes", "Is there?", True),
    ("maybe", "no", "Is there?", True),  # not a leading yes: a no, as POPE counts it
    ("maybe", "yes", "Is there?", False),
    ("B", "B", "Which?\nA. cat\nB. dog", True),
    ("(b) dog", "B", "Which?\nA. cat\nB. dog", True),
    ("A. cat", "B", "Which?\nA. cat\nB. dog", False),
    ("B", "B", "Which one, B or C?", True),  # no option lines: plain exact match
])
def test_is_correct(prediction, answer, question, right):
    assert is_correct(prediction, answer, question) is right


def test_options_are_letters_at_line_starts():
    assert options("Pick one.\nA. red\n(B) blue\nC: green") == ["A", "B", "C"]
    assert options("Is A. bigger?") == []


def test_pope_metrics_exact():
    answers = ["yes", "yes", "yes", "no", "no", "no", "no", "no"]
    preds = ["yes", "Yes.", "no", "yes", "no", "No", "nothing", "no"]
    # tp 2, fn 1, fp 1, tn 4
    got = pope(preds, answers)
    assert got == pytest.approx({"accuracy": 6 / 8, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                 "yes_ratio": 3 / 8})
    assert pope(["no", "no"], ["yes", "no"]) == pytest.approx(
        {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0})


def test_score_mixes_kinds_and_counts_missing_predictions_wrong():
    got = score(["yes", None, "3", "blue"], ["yes", "no", "three", "red"], ["Is?", "Is?", "How many?", "Colour?"])
    assert got["accuracy"] == 0.5
    assert got["correct"] == [True, False, True, False]  # None: the item failed, so it is wrong
    assert got["pope"]["f1"] == 1.0 and got["pope"]["yes_ratio"] == 0.5  # POPE: no answer is a "no"
    assert score(["red"], ["red"], ["Colour?"])["pope"] is None
