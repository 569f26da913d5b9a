"""Masked-LM verbaliser scoring (LM-BFF) against a direct full-vocabulary computation."""

import pytest
import torch
import torch.nn.functional as F

from zobench.errors import ConfigError
from zobench.models import MaskedScorer, load_model
from zobench.models.loading import model_config
from zobench.tasks import Rendered


@pytest.fixture(scope="module")
def roberta():
    return load_model(model_config("tiny-roberta"))


def _examples():
    return [
        Rendered("a fine, moving film It was <mask>.", ("terrible", "great"), 1),
        Rendered("dull It was <mask>.", ("terrible", "great"), 0),
        Rendered("<mask> : What is the capital of France ?", ("Description", "Entity", "Location"), 2),
    ]


def test_scores_equal_the_full_mlm_logits_at_the_mask(roberta):
    model, tokenizer = roberta
    scorer = MaskedScorer(model, tokenizer, 32, "cpu")
    batch = [scorer.encode(r) for r in _examples()]
    with torch.no_grad():
        scores = scorer.scores(batch)
        for row, e in enumerate(batch):
            full = model(input_ids=torch.tensor([e.ids])).logits[0, e.mask_position]
            expected = full[list(e.words)]
            assert torch.allclose(scores[row, : len(e.words)], expected, atol=1e-5)
            assert torch.isinf(scores[row, len(e.words) :]).all()
        labels = torch.tensor([e.label for e in batch])
        assert torch.allclose(scorer.loss(batch), F.cross_entropy(scores, labels))


def test_encoding_puts_one_mask_and_single_token_words(roberta):
    _, tokenizer = roberta
    scorer = MaskedScorer(roberta[0], tokenizer, 32, "cpu")
    e = scorer.encode(_examples()[0])
    assert e.ids.count(tokenizer.mask_token_id) == 1 and e.ids[e.mask_position] == tokenizer.mask_token_id
    assert e.words == tuple(tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in ("terrible", "great"))
    # the space before <mask> is not a token of its own
    assert tokenizer.decode(e.ids).endswith("It was<mask>.")


def test_truncation_keeps_the_mask_and_the_text_next_to_it(roberta):
    model, tokenizer = roberta
    scorer = MaskedScorer(model, tokenizer, 12, "cpu")
    e = scorer.encode(Rendered("one two three " * 20 + "It was <mask>.", ("terrible", "great"), 0))
    assert len(e.ids) <= 12 and tokenizer.decode(e.ids).endswith("three It was<mask>.")


def test_bad_prompts_and_words_are_refused(roberta):
    scorer = MaskedScorer(*roberta, 32, "cpu")
    with pytest.raises(ConfigError, match="exactly one <mask>"):
        scorer.encode(Rendered("no mask here", ("terrible", "great"), 0))
    with pytest.raises(ConfigError, match="verbaliser word 'wonderfully-so'"):
        scorer.encode(Rendered("x <mask>", ("wonderfully-so", "great"), 0))


def test_evaluate_reports_accuracy_of_the_argmax(roberta):
    scorer = MaskedScorer(*roberta, 32, "cpu")
    batch = [scorer.encode(r) for r in _examples()]
    with torch.no_grad():
        predictions = scorer.predict(batch)
    expected = sum(p == e.label for p, e in zip(predictions, batch)) / len(batch)
    assert scorer.evaluate(batch, batch_size=2) == {"accuracy": pytest.approx(expected)}


def test_replicated_losses_equal_the_single_loss(roberta):
    scorer = MaskedScorer(*roberta, 32, "cpu")
    batch = [scorer.encode(r) for r in _examples()]
    with torch.no_grad():
        single, replicated = scorer.loss(batch), scorer.loss(batch, replicas=2)
    torch.testing.assert_close(replicated, single.repeat(2), rtol=1e-5, atol=1e-6)
