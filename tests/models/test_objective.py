"""Candidate scoring: MeZO's tokenisation, fast path = per-pair path, loss = CE of mean log-probs."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_model
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


# --- prefix-shared scoring of multi-token candidates (KV cache) ----------------------------------


@pytest.mark.parametrize("family", ["llama", "opt", "phi", "gemma3"])
def test_prefix_shared_scores_equal_the_per_pair_forward(family):
    """Contexts of different lengths (left padding), options of 1-4 tokens (right padding in the
    continuation), a context longer than Gemma's sliding window: the same log-probabilities as
    one (context + option) sequence per pair."""
    scorer = CandidateScorer(tiny_model(family), CharTokenizer(), max_length=64, device="cpu")
    prompts = ["the film was", "a long and winding prompt here", "x"]
    encoded = [scorer.encode(Rendered(p, ("cat", "d", "dog!", "ok"), 0)) for p in prompts]
    shared = scorer.scores(encoded)
    scorer.share_prefix = False
    per_pair = scorer.scores(encoded)
    torch.testing.assert_close(shared, per_pair, rtol=1e-5, atol=1e-5)
    for row, expected in zip(shared, _naive_scores(scorer.model, encoded)):
        torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-5)


def test_prefix_shared_scoring_runs_each_context_once_and_counts_one_forward():
    from zobench.telemetry import ForwardCounter

    scorer = CandidateScorer(tiny_model("llama"), CharTokenizer(), max_length=64, device="cpu")
    rows = []
    handle = scorer.model.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape), with_kwargs=True)
    counter = ForwardCounter(scorer.model)
    try:
        encoded = [scorer.encode(Rendered(p, ("cat", "dog", "d"), 0)) for p in ["ab", "abcd"]]
        scorer.scores(encoded)
    finally:
        handle.remove()
        counter.remove()
    # 2 contexts once, then 6 pairs continue from the cache with their options' last 2 tokens at most
    assert rows == [torch.Size([2, 5]), torch.Size([6, 2])]
    assert counter["train"] == 1


def test_prefix_shared_scoring_is_used_only_where_contexts_repeat():
    scorer = CandidateScorer(tiny_model("llama"), CharTokenizer(), max_length=64, device="cpu")
    calls = []
    handle = scorer.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        # the lm objective scores one (gold) option per example: nothing to share, one call
        scorer._option_logprobs([((1, 5, 6), (7, 8)), ((1, 9), (10, 11, 12))])
    finally:
        handle.remove()
    assert len(calls) == 1


def test_prefix_shared_scoring_under_the_engines_perturbation_and_forward_mode():
    """The prompt call and its continuation see the same perturbed weights (virtual engine), and
    forward-mode tangents flow through the KV cache: loss and ∇L·z as on the per-pair path."""
    import torch.autograd.forward_ad as fwAD

    from zobench.engine import Direction, VirtualEngine

    scorer = CandidateScorer(tiny_model("llama", torch.float64), CharTokenizer(), max_length=64, device="cpu")
    encoded = [scorer.encode(Rendered(p, ("cat", "d", "dog!"), i % 3)) for i, p in enumerate(["ab", "abcdef", "q"])]
    params = list(enumerate(scorer.model.parameters()))
    engine = VirtualEngine(scorer.model)
    results = {}
    for share in (True, False):
        scorer.share_prefix = share
        with torch.no_grad():
            engine.perturb(params, Direction(3), 1e-2)
            perturbed = float(scorer.loss(encoded))
            engine.restore(params)
            with engine.dual(params, Direction(4)):
                tangent = float(fwAD.unpack_dual(scorer.loss(encoded)).tangent)
        results[share] = (perturbed, tangent)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-10)
    assert results[True][1] == pytest.approx(results[False][1], rel=1e-8)


@pytest.mark.parametrize("evaluation", ["mirrored", "replicas"])
def test_prefix_shared_scoring_of_replicas_equals_the_per_pair_forward(evaluation):
    """The batched evaluations (the ± pair, FZOO's directions) keep prefix sharing: replica r's
    options continue from replica r's contexts, and each replica's loss is what the per-pair
    path and the sequential evaluation give."""
    from zobench.engine import Direction, VirtualEngine

    scorer = CandidateScorer(tiny_model("llama"), CharTokenizer(), max_length=64, device="cpu")
    encoded = [scorer.encode(Rendered(p, ("cat", "d", "dog!"), i % 3)) for i, p in enumerate(["ab", "abcdef", "q"])]
    params = list(enumerate(scorer.model.parameters()))
    engine = VirtualEngine(scorer.model)
    directions = [Direction(3), Direction(5)]
    losses, rows = {}, []
    handle = scorer.model.register_forward_pre_hook(
        lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True
    )
    for share in (True, False):
        scorer.share_prefix = share
        with torch.no_grad():
            batched = (
                engine.mirrored(params, directions[0], 1e-2)
                if evaluation == "mirrored"
                else engine.replicas(params, directions, 1e-2)
            )
            with batched:
                losses[share] = scorer.loss(encoded, replicas=2)
    handle.remove()
    assert rows == [2 * 3, 2 * 9, 2 * 9]  # shared: 3 contexts, then 9 continuations; per pair: 9 sequences
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)
    sequential = []
    with torch.no_grad():
        for direction, scale in (
            (directions[0], 1e-2),
            (directions[0], -1e-2) if evaluation == "mirrored" else (directions[1], 1e-2),
        ):
            engine.perturb(params, direction, scale)
            sequential.append(scorer.loss(encoded))
        engine.restore(params)
    torch.testing.assert_close(losses[True], torch.stack(sequential), rtol=1e-5, atol=1e-6)
    assert losses[True][0] != losses[True][1]


def test_zo_closure_offers_replicas_only_when_the_objective_takes_them():
    """A custom objective without ``replicas`` still trains: its closure is a plain one, so the
    methods evaluate one perturbation per call instead of calling it with replicas=2."""
    from zobench.models import zo_closure
    from zobench.optim.fzoo import accepts_replicas

    class Plain:
        def loss(self, batch):
            return torch.tensor(float(len(batch)))

    class Batched(Plain):
        def loss(self, batch, replicas=1):
            return torch.full((replicas,), float(len(batch))) if replicas > 1 else torch.tensor(float(len(batch)))

    plain, batched = zo_closure(Plain(), [1, 2], "loss"), zo_closure(Batched(), [1, 2], "loss")
    assert not accepts_replicas(plain) and float(plain()) == 2.0
    assert accepts_replicas(batched) and batched(replicas=2).tolist() == [2.0, 2.0]
