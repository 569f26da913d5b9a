"""Linear probing: features are the LM-head input at the scored position; the probe is a fitted
logistic regression whose predictions the run reports."""

import numpy as np
import pytest
import torch

from zobench.errors import ConfigError
from zobench.models import CandidateScorer, MaskedScorer, load_model
from zobench.models.linear_probe import fit_linear_probe
from zobench.models.loading import model_config
from zobench.tasks import Rendered


@pytest.fixture(scope="module")
def llama():
    return load_model(model_config("tiny-llama"))


def _examples(n=40):
    rng = np.random.RandomState(0)
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    out = []
    for i in range(n):
        label = i % 2
        word = words[rng.randint(3) + 3 * (1 - label)]
        out.append(Rendered(f"It was {word}", (" terrible", " great"), label))  # the word is the last token
    return out


def test_causal_features_are_the_lm_head_input_at_the_last_prompt_token(llama):
    model, tokenizer = llama
    scorer = CandidateScorer(model, tokenizer, 64, "cpu")
    batch = [scorer.encode(r) for r in _examples(3)]
    with torch.no_grad():
        features = scorer.features(batch)
        for row, e in enumerate(batch):
            hidden = model.model(input_ids=torch.tensor([e.contexts[0]])).last_hidden_state[0, -1]
            torch.testing.assert_close(features[row], hidden, rtol=1e-4, atol=1e-5)


def test_masked_features_are_the_encoder_output_at_the_mask():
    model, tokenizer = load_model(model_config("tiny-roberta"))
    scorer = MaskedScorer(model, tokenizer, 32, "cpu")
    e = scorer.encode(Rendered("a fine film It was <mask>.", ("terrible", "great"), 1))
    with torch.no_grad():
        expected = model.roberta(input_ids=torch.tensor([e.ids])).last_hidden_state[0, e.mask_position]
        torch.testing.assert_close(scorer.features([e])[0], expected, rtol=1e-4, atol=1e-5)


def test_the_probe_learns_a_separable_task_and_reports_its_accuracy(llama):
    """Sentiment words of two classes: the probe separates them on held-out sentences."""
    scorer = CandidateScorer(*llama, 64, "cpu")
    examples = [scorer.encode(r) for r in _examples(60)]
    probe = fit_linear_probe(scorer, examples[:40], batch_size=16, seed=0)
    features = probe.features(examples[40:], 8)
    expected = np.mean(probe.classifier.predict(features) == np.array([e.label for e in examples[40:]]))
    result = probe.evaluate(examples[40:], 8)
    assert result == {"accuracy": pytest.approx(expected)} and result["accuracy"] >= 0.9
    assert float(probe.loss(examples[40:48])) > 0


def test_tasks_without_a_fixed_label_set_are_refused(llama):
    scorer = CandidateScorer(*llama, 64, "cpu", objective="lm")
    with pytest.raises(ConfigError, match="needs a classification task"):
        fit_linear_probe(scorer, [scorer.encode(r) for r in _examples(4)], batch_size=4)
