"""SQuAD v1.1 F1 / EM (official normalisation, max over answers) and candidate accuracy."""

import pytest

from zobench.tasks import Rendered
from zobench.tasks.metrics import exact_match, is_correct, normalize_answer, squad_f1


@pytest.mark.parametrize(
    "prediction, answers, f1, em",
    [
        ("Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
        ("The Denver Broncos!", ["Denver Broncos"], 1.0, 1.0),  # articles and punctuation ignored
        ("denver   BRONCOS", ["Denver Broncos"], 1.0, 1.0),  # case and whitespace ignored
        ("Denver Broncos won", ["Denver Broncos"], 0.8, 0.0),  # P 2/3, R 1
        ("Carolina Panthers", ["Denver Broncos", "Carolina"], 2 / 3, 0.0),  # best answer: P 1/2, R 1
        ("b b c", ["b c c"], 2 / 3, 0.0),  # bag-of-tokens overlap, counts clipped
        ("", ["Denver Broncos"], 0.0, 0.0),  # empty prediction scores 0
        ("The.", ["the"], 0.0, 1.0),  # both normalise to "": EM 1, F1 0 (official)
        ("24–10", ["24–10"], 1.0, 1.0),  # the en dash is not ASCII punctuation
        ("Santa Clara, California", ["Levi's Stadium", "Santa Clara, California"], 1.0, 1.0),
    ],
)
def test_squad_f1_and_em_as_the_official_script_scores(prediction, answers, f1, em):
    assert squad_f1(prediction, answers) == pytest.approx(f1)
    assert exact_match(prediction, answers) == em


def test_normalisation_is_squads():
    assert normalize_answer("  An Apple, the PIE and a dog's bone.") == "apple pie and dogs bone"
    assert normalize_answer("theater") == "theater"  # only whole-word articles go


def test_no_reference_answers_is_an_error():
    with pytest.raises(ValueError, match="no reference answers"):
        squad_f1("x", [])


def test_accuracy_counts_any_gold_candidate():
    record = Rendered("p", (" a", " b", " c"), label=1, gold=(1, 2))
    assert [is_correct(i, record) for i in range(3)] == [False, True, True]
    plain = Rendered("p", (" a", " b"), label=0)
    assert [is_correct(i, plain) for i in range(2)] == [True, False]
