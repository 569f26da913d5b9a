"""Task metrics: accuracy over candidates, and SQuAD F1 / exact match for generation.

F1 and EM follow the official SQuAD v1.1 evaluation script (Rajpurkar et al., 2016): answers are
normalised (lower-cased, punctuation removed, the articles a/an/the removed, whitespace
collapsed), F1 is the harmonic mean of token precision and recall over the bag of normalised
tokens, and the score of a prediction is the maximum over the reference answers. MeZO
(large_models/metrics.py) scores SQuAD and DROP with exactly this, DROP against its
``answers_spans.spans`` (not the official DROP metric, which also aligns numbers and multi-span
answers), so the same functions serve both.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

from .spec import Rendered

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower, drop punctuation, drop articles, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, answer: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(answer).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:  # also covers an empty prediction or answer, as the official script does
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, answers: Iterable[str]) -> float:
    """Token F1 of ``prediction`` against its best-matching reference answer."""
    answers = list(answers)
    if not answers:
        raise ValueError("squad_f1: no reference answers")
    return max(_f1(prediction, a) for a in answers)


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference answer, else 0.0."""
    answers = list(answers)
    if not answers:
        raise ValueError("exact_match: no reference answers")
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def is_correct(predicted: int, example: Rendered) -> bool:
    """Candidate-scoring accuracy of one example: a hit on any gold candidate counts (ReCoRD's
    several correct entities; MeZO's ``calculate_metric`` for list-valued gold)."""
    return predicted in example.gold_indices
