"""Scoring answers against labels: normalised exact match, option letters, POPE yes/no metrics.

Pure functions on strings; no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
    )
}
ARTICLES = {"a", "an", "the"}
# An option line in the question: "A. red", "(B) blue", "C: green" at the start of a line.
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]\s+\S", re.MULTILINE)
_LEADING_LETTER = re.compile(r"^\s*\(?([A-Za-z])(?:[.):]|\s|$)")


def normalize(text: str) -> str:
    """Lowercase, punctuation and articles dropped, number words as digits, single spaces."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def yes_no(text: str) -> str | None:
    """'yes' or 'no' from the answer's first word, else None."""
    words = normalize(text).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def options(question: str) -> list[str]:
    """Option letters the question lists, one per line ("A. ...", "(B) ..."), in order."""
    return _OPTION_LINE.findall(question)


def is_correct(prediction: str, answer: str, question: str = "") -> bool:
    """Option-letter match when the question lists options and the answer is one of them; yes/no by the
    prediction's first word when the answer is yes or no (not starting with yes = no, as in POPE);
    otherwise normalised exact match."""
    letters = options(question)
    if letters and answer.strip().upper() in letters:
        found = _LEADING_LETTER.match(prediction)
        return bool(found) and found.group(1).upper() == answer.strip().upper()
    gold = normalize(answer)
    if gold in ("yes", "no"):  # as POPE scores it: anything but a leading yes is a no
        return ("yes" if yes_no(prediction) == "yes" else "no") == gold
    return normalize(prediction) == gold


def pope(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE's metrics over yes/no items, 'yes' being the positive class.

    A prediction whose first word is not yes counts as no (as in POPE's evaluation).
    """
    if not answers:
        raise ValueError("no yes/no items to score")
    said_yes = [yes_no(p) == "yes" for p in predictions]
    is_yes = [normalize(a) == "yes" for a in answers]
    tp = sum(s and g for s, g in zip(said_yes, is_yes))
    fp = sum(s and not g for s, g in zip(said_yes, is_yes))
    fn = sum(not s and g for s, g in zip(said_yes, is_yes))
    tn = len(answers) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(answers), "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": sum(said_yes) / len(answers),
    }


def score(predictions: Sequence[str | None], answers: Sequence[str], questions: Sequence[str]) -> dict[str, Any]:
    """Accuracy over all items (a missing prediction, e.g. a failed item, is wrong) and POPE metrics over
    the yes/no items (None when there are none; there a missing prediction is a "no", POPE's rule)."""
    if not answers:
        raise ValueError("nothing to score")
    preds = [p or "" for p in predictions]
    correct = [p is not None and is_correct(p, a, q) for p, a, q in zip(predictions, answers, questions)]
    binary = [i for i, a in enumerate(answers) if normalize(a) in ("yes", "no")]
    return {
        "accuracy": sum(correct) / len(answers),
        "correct": correct,
        "pope": pope([preds[i] for i in binary], [answers[i] for i in binary]) if binary else None,
    }
