"""Candidate scoring: MeZO's tokenisation, fast path = per-pair path, loss = CE of mean log-probs."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_model
from zobench.models import CandidateScorer, evaluate_accuracy
from zobench.models.loading import load_tokenizer, model_config
from zobench.tasks import Rendered


class CharTokenizer:
    """One token per character (ids 3..), BOS=1 prepended, pad=0: makes token counts predictable."""

    bos_token_id, pad_token_id = 1, 0

    def encode(self, text):
        return [1] + [3 + (ord(c) % 60) for c in text]


@pytest.fixture(scope="module")
def scorer():
    return CandidateScorer(tiny_model("llama"), CharTokenizer(), max_length=64, device="cpu")


def _naive_scores(model, encoded):
    """The authors' computation: one full forward per (example, candidate), full-vocab logits."""
    out = []
    for e in encoded:
        row = []
        for context, option in zip(e.contexts, e.options):
            ids = torch.tensor([context + option])
            logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            n = len(option)
            positions = torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1)
            row.append(logprobs[positions, torch.tensor(option)].mean())
        out.append(torch.stack(row))
    return out


def test_candidate_tokens_are_the_tail_of_the_joint_encoding(scorer):
    e = scorer.encode(Rendered("ab", ("c", "de"), 1))
    assert e.contexts == ((1, 3 + ord("a") % 60, 3 + ord("b") % 60),) * 2
    assert e.options == ((3 + ord("c") % 60,), (3 + ord("d") % 60, 3 + ord("e") % 60))
    assert not e.shared_single_token
    assert scorer.encode(Rendered("ab", ("c", "d"), 0)).shared_single_token


def test_truncation_keeps_bos_and_the_end(scorer):
    e = scorer.encode(Rendered("x" * 100, ("y",), 0))
    assert len(e.contexts[0]) + 1 == 64 and e.contexts[0][0] == 1


@pytest.mark.parametrize("candidates", [("c", "d"), ("cat", "d", "dog!")], ids=["single-token", "multi-token"])
def test_scores_match_the_naive_per_pair_computation(scorer, candidates):
    prompts = ["the film was", "a long and winding prompt here", "x"]
    encoded = [scorer.encode(Rendered(p, candidates, 0)) for p in prompts]
    got = scorer.scores(encoded)
    want = _naive_scores(scorer.model, encoded)
    for row, expected in zip(got, want):
        torch.testing.assert_close(row[: len(expected)], expected, rtol=1e-5, atol=1e-5)


def test_fast_path_equals_the_general_path(scorer, monkeypatch):
    encoded = [scorer.encode(Rendered(p, ("c", "d"), i % 2)) for i, p in enumerate(["aa", "bbbb", "c d e f"])]
    fast = scorer.scores(encoded)
    monkeypatch.setattr(type(encoded[0]), "shared_single_token", property(lambda self: False))
    general = scorer.scores(encoded)
    torch.testing.assert_close(fast, general, rtol=1e-5, atol=1e-5)


def test_loss_is_cross_entropy_over_mean_log_likelihoods(scorer):
    encoded = [scorer.encode(Rendered(p, ("cat", "d"), i % 2)) for i, p in enumerate(["ab", "abc", "q"])]
    scores = torch.stack(_naive_scores(scorer.model, encoded))
    expected = F.cross_entropy(scores, torch.tensor([0, 1, 0]))
    torch.testing.assert_close(scorer.loss(encoded), expected, rtol=1e-5, atol=1e-5)


def test_one_forward_per_batch_and_accuracy(scorer):
    calls = []
    handle = scorer.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        encoded = [scorer.encode(Rendered(p, ("c", "d"), 0)) for p in ["a", "bb", "ccc", "dddd", "e"]]
        accuracy, batches = evaluate_accuracy(scorer, encoded, batch_size=2)
    finally:
        handle.remove()
    predictions = scorer.predict(encoded)
    assert accuracy == sum(p == 0 for p in predictions) / 5
    assert batches == len(calls) == 3


def test_real_tokenizer_prompt_and_candidates():
    """SmolLM2's tokenizer: SST-2's candidates are single tokens, so the fast path applies."""
    tokenizer = load_tokenizer(model_config("smollm2-135m"))
    scorer = CandidateScorer(tiny_model("llama"), tokenizer, max_length=256, device="cpu")
    e = scorer.encode(Rendered("a charming film It was", (" terrible", " great"), 1))
    assert e.shared_single_token
    assert tokenizer.decode(list(e.options[1])) == " great"
    assert tokenizer.decode(list(e.contexts[0])) == "a charming film It was"
