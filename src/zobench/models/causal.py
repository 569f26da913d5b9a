"""Candidate scoring for causal LMs (MeZO's classification and LM objectives).

For an example with prompt x and candidates c_1..c_K, the score of c_k is its mean token
log-likelihood  s_k = (1/|c_k|) Σ_t log p(c_k,t | x, c_k,<t).  Prediction = argmax_k s_k (correct
when it is one of the gold candidates: ReCoRD accepts every mention of the answer entity).
Training loss, per task (``objective``):

* ``classification``: cross-entropy of softmax(s) against the gold candidate (MeZO,
  large_models/utils.py ``forward_wrap_with_option_len``, with its length normalisation);
* ``lm``: the language-modelling loss on the gold continuation only,
  -Σ_{examples, t} log p(c*_t | x, c*_<t) / Σ_examples |c*| (MeZO's non-classification tasks:
  COPA, ReCoRD, SQuAD, DROP, where the HF loss averages over every labelled token of the batch).

Tokenisation follows MeZO's ``encode_prompt``: prompt+candidate is tokenised as one string and the
candidate is its last ``len(enc(prompt+cand)) - len(enc(prompt))`` tokens; over-long inputs keep
the BOS token and the last ``max_length - 1`` tokens.

Fast path: when every candidate of every example in a batch is one token and the contexts are
identical (SST-2, RTE, most classification prompts), the prompt runs once and each candidate is
read from the last position's logits: one sequence per example instead of one per candidate,
and logits only at one position. Multi-token candidates (COPA, ReCoRD, TREC's labels) share
their context through the KV cache: each distinct context runs once, and every candidate's
remaining tokens continue from a copy of its cache rows (``_shared_option_logprobs``), with
logits only at the candidates' positions (and their right padding). The ForwardCounter counts either path as one forward
pass per batch (the continuation call is the second half of it). Batched replicas (FZOO's
directions, the mirrored ± pair) share prefixes too, replica-major in both calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..tasks import Rendered
from ..tasks.batches import eval_batches
from ..telemetry import CONTINUATION
from .introspect import forward_options, hf_model


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example: per-candidate context and continuation, and the gold index."""

    contexts: tuple[tuple[int, ...], ...]
    options: tuple[tuple[int, ...], ...]
    label: int
    gold: tuple[int, ...] = ()  # every acceptable candidate; () means (label,)

    @property
    def gold_set(self) -> tuple[int, ...]:
        return self.gold or (self.label,)

    @property
    def shared_single_token(self) -> bool:
        return all(len(o) == 1 for o in self.options) and len(set(self.contexts)) == 1

    @property
    def length(self) -> int:
        return max(len(c) + len(o) for c, o in zip(self.contexts, self.options))


OBJECTIVES = ("classification", "lm")


def classification_loss(scores: torch.Tensor, batch) -> torch.Tensor:
    """Cross-entropy of the candidate scores against the gold labels: scores (B, K) give a scalar,
    replicated scores (R, B, K) one loss per replica, shape (R,)."""
    labels = torch.tensor([e.label for e in batch])
    if scores.dim() == 2:
        return F.cross_entropy(scores, labels)
    return torch.stack([F.cross_entropy(replica, labels) for replica in scores])


class CandidateScorer:
    """Scores candidates with a causal LM; ``loss``, ``scores``, ``predict`` and ``evaluate``."""

    metric = "accuracy"

    def __init__(
        self, model, tokenizer, max_length: int, device: torch.device | str, objective: str = "classification"
    ) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective={objective!r}: candidate scoring trains with {', '.join(OBJECTIVES)}")
        self.objective = objective
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        probe = tokenizer.encode("a")
        self.keeps_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
        self._takes_positions, self._takes_logits_to_keep = forward_options(model)
        # candidates sharing a context: run it once and continue each option from its KV cache
        self.share_prefix = True

    # -- encoding -----------------------------------------------------------------------------
    def _truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_length:
            return ids
        if self.keeps_bos:
            return ids[:1] + ids[1:][-(self.max_length - 1) :]
        return ids[-self.max_length :]

    def encode(self, example: Rendered) -> Encoded:
        prompt_len = len(self.tokenizer.encode(example.prompt))
        contexts, options = [], []
        for candidate in example.candidates:
            full = self.tokenizer.encode(example.prompt + candidate)
            option_len = len(full) - prompt_len
            if option_len <= 0:
                raise ConfigError(f"candidate {candidate!r} adds no token to prompt {example.prompt[-60:]!r}")
            if option_len >= self.max_length:
                raise ConfigError(f"candidate {candidate!r} is longer than max_length={self.max_length}")
            full = self._truncate(full)
            contexts.append(tuple(full[:-option_len]))
            options.append(tuple(full[-option_len:]))
        return Encoded(tuple(contexts), tuple(options), example.label, tuple(getattr(example, "gold", ())))

    # -- model call ---------------------------------------------------------------------------
    def _left_padded(self, sequences: Sequence[Sequence[int]], replicas: int = 1) -> tuple[dict, torch.Tensor]:
        """Model inputs for left-padded ``sequences`` (repeated replica-major ``replicas`` times):
        input_ids, attention_mask and, where the model takes them, position ids that count real
        tokens only; and the (CPU) attention mask."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        ids, mask = ids.repeat(replicas, 1), mask.repeat(replicas, 1)
        kwargs = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        if self._takes_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        return kwargs, mask

    def _forward(self, sequences: Sequence[Sequence[int]], keep: int, replicas: int = 1) -> torch.Tensor:
        """Log-probabilities (float32) at the last ``keep`` positions of left-padded sequences.

        ``replicas`` > 1: the sequences are repeated replica-major in one model call (batched
        FZOO: replica r sees the engine's r-th perturbation); rows come back in that order."""
        kwargs, _ = self._left_padded(sequences, replicas)
        kwargs["use_cache"] = False
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs).logits[:, -keep:]
        return F.log_softmax(logits.float(), dim=-1)

    def scores(self, batch: Sequence[Encoded], replicas: int = 1) -> torch.Tensor:
        """Mean log-likelihood per candidate, shape (B, K_max) (``replicas`` > 1: (R, B, K_max));
        missing candidates are -inf.

        Differentiable when called with grad enabled (first-order baselines); the ZO loop runs
        it under ``torch.no_grad``."""
        k_max = max(len(e.options) for e in batch)
        rows = []
        if all(e.shared_single_token for e in batch):
            logprobs = self._forward([e.contexts[0] for e in batch], keep=1, replicas=replicas)[:, 0].cpu()
            for r in range(replicas):
                for row, e in enumerate(batch):
                    rows.append(logprobs[r * len(batch) + row, torch.tensor([o[0] for o in e.options])])
        else:
            pairs = [(row, c, o) for row, e in enumerate(batch) for c, o in zip(e.contexts, e.options)]
            per_pair = self._option_logprobs([(c, o) for _, c, o in pairs], replicas)
            for r in range(replicas):
                by_row: list[list[torch.Tensor]] = [[] for _ in batch]
                for (row, _, _), token_logprobs in zip(pairs, per_pair[r * len(pairs) : (r + 1) * len(pairs)]):
                    by_row[row].append(token_logprobs.mean())
                rows.extend(torch.stack(x) for x in by_row)
        out = torch.stack([F.pad(x, (0, k_max - len(x)), value=float("-inf")) for x in rows])
        return out if replicas == 1 else out.view(replicas, len(batch), k_max)

    def _option_logprobs(
        self, pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], replicas: int = 1
    ) -> list[torch.Tensor]:
        """log p of every option token given its context, one tensor per (context, option) pair
        (replica-major when ``replicas`` > 1)."""
        if self.share_prefix and len(set(c for c, _ in pairs)) < len(pairs):
            return self._shared_option_logprobs(pairs, replicas)
        keep = max(len(o) for _, o in pairs) + 1
        logprobs = self._forward([c + o for c, o in pairs], keep=keep, replicas=replicas).cpu()
        out = []
        for i in range(replicas * len(pairs)):
            option = pairs[i % len(pairs)][1]
            n = len(option)
            # the token at position T-n+t is predicted by position T-n+t-1, kept index keep-n+t-1
            positions = torch.arange(keep - n - 1, keep - 1)
            out.append(logprobs[i, positions, torch.tensor(option)])
        return out

    def _shared_option_logprobs(self, pairs, replicas: int = 1) -> list[torch.Tensor]:
        """``_option_logprobs`` with every distinct context run once: the contexts go through the
        model (left-padded, logits at their last position only, which predict each option's
        first token), their KV cache is gathered to one row per pair, and the options' remaining
        tokens run on top of it (right-padded: causal attention keeps padding after the real
        tokens out of them). Two model calls that are one forward pass of the pairs (the
        ForwardCounter counts one); the same log-probabilities as the per-pair forward, to
        float rounding (tests/models/test_objective.py). ``replicas`` > 1: both calls are
        replica-major (replica r's pairs continue from replica r's contexts), results too."""
        contexts = list(dict.fromkeys(c for c, _ in pairs))
        row_of = {c: i for i, c in enumerate(contexts)}
        n_ctx = len(contexts)
        kwargs, mask = self._left_padded(contexts, replicas)
        kwargs["use_cache"] = True
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()  # predicts each option's first token
        rest = max(len(o) for _, o in pairs) - 1
        later = None
        if rest > 0:
            rows = torch.tensor([r * n_ctx + row_of[c] for r in range(replicas) for c, _ in pairs])
            out.past_key_values.reorder_cache(rows.to(self.device))  # one cache row per pair (rows repeat)
            later = self._continuation_logprobs(pairs, mask[rows], out.past_key_values, rest, replicas)
        result = []
        for r in range(replicas):
            for i, (context, option) in enumerate(pairs):
                values = [first[r * n_ctx + row_of[context], option[0]]]
                if len(option) > 1:
                    assert later is not None  # rest > 0: the continuation forward ran
                    values.append(later[r * len(pairs) + i, torch.arange(len(option) - 1), torch.tensor(option[1:])])
                result.append(torch.cat([values[0].view(1)] + values[1:]))
        return result

    def _continuation_logprobs(self, pairs, context_mask, cache, rest: int, replicas: int) -> torch.Tensor:
        """Log-softmax over the options' tokens after the first, run on top of ``cache`` (one
        context row per pair, replica-major; ``context_mask`` its attention mask): the options
        right-padded to ``rest`` tokens, positions continuing from each context's length."""
        cont = torch.full((len(pairs), rest), self.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(pairs), rest), dtype=torch.long)
        for i, (_, option) in enumerate(pairs):
            cont[i, : len(option) - 1] = torch.tensor(option[:-1], dtype=torch.long)
            cont_mask[i, : len(option) - 1] = 1
        cont, cont_mask = cont.repeat(replicas, 1), cont_mask.repeat(replicas, 1)
        kwargs = dict(
            input_ids=cont.to(self.device),
            attention_mask=torch.cat([context_mask, cont_mask], dim=1).to(self.device),
            past_key_values=cache,
            use_cache=True,
        )
        if self._takes_positions:
            lengths = torch.tensor([len(c) for c, _ in pairs]).repeat(replicas)
            kwargs["position_ids"] = (lengths[:, None] + torch.arange(rest)).to(self.device)
        token = CONTINUATION.set(True)
        try:
            return F.log_softmax(self.model(**kwargs).logits.float(), dim=-1).cpu()
        finally:
            CONTINUATION.reset(token)

    def loss(self, batch: Sequence[Encoded], replicas: int = 1) -> torch.Tensor:
        """The training loss; ``replicas`` > 1: one loss per replica, shape (R,), from one call."""
        if self.objective == "lm":
            gold = self._option_logprobs([(e.contexts[e.label], e.options[e.label]) for e in batch], replicas)
            per_replica = [-torch.cat(gold[r * len(batch) : (r + 1) * len(batch)]).mean() for r in range(replicas)]
            return per_replica[0] if replicas == 1 else torch.stack(per_replica)
        return classification_loss(self.scores(batch, replicas), batch)

    def loss_count(self, batch: Sequence[Encoded]) -> int:
        """The units ``loss`` averages over: examples (classification), gold tokens (``lm``); a
        data-parallel run weights each rank's shard by it (``dist/data.py``)."""
        if self.objective == "lm":
            return sum(len(e.options[e.label]) for e in batch)
        return len(batch)

    def predict(self, batch: Sequence[Encoded]) -> list[int]:
        return self.scores(batch).argmax(dim=-1).tolist()

    def example_scores(self, batch: Sequence[Encoded]) -> dict[str, list[float]]:
        """Per-example metric values of one evaluation batch (1.0 correct, 0.0 not): ``evaluate``'s
        mean, sharded over ranks by ``dist/evaluation.py``."""
        with torch.no_grad():
            predictions = self.predict(batch)
        return {"accuracy": [float(p in e.gold_set) for p, e in zip(predictions, batch)]}

    def features(self, batch: Sequence[Encoded]) -> torch.Tensor:
        """The LM head's input at the last context token, (B, hidden), float32 (linear probing)."""
        captured = []
        head = hf_model(self.model).get_output_embeddings()
        handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0][:, -1]))
        try:
            self._forward([e.contexts[0] for e in batch], keep=1)
        finally:
            handle.remove()
        return captured[0].float().cpu()

    def batch_metric(self, batch: Sequence[Encoded]) -> float:
        """Accuracy on one batch (the non-differentiable ZO objective ``objective=accuracy``)."""
        return sum(int(p in e.gold_set) for p, e in zip(self.predict(batch), batch)) / len(batch)

    def evaluate(self, examples: Sequence[Encoded], batch_size: int) -> dict:
        accuracy, _ = evaluate_accuracy(self, examples, batch_size)
        return {"accuracy": accuracy}


class Predictor(Protocol):
    """A scorer that picks an option per example (causal and masked-LM prompts alike)."""

    def predict(self, batch: Sequence[Any]) -> list[int]: ...


def evaluate_accuracy(scorer: Predictor, examples: Sequence[Any], batch_size: int) -> tuple[float, int]:
    """Accuracy over ``examples`` and the number of model forwards it took.

    Batches are formed from length-sorted examples (less padding); order does not change any
    prediction.
    """
    correct = batches = 0
    for indices in eval_batches(examples, batch_size):
        chunk = [examples[i] for i in indices]
        with torch.no_grad():
            predictions = scorer.predict(chunk)
        correct += sum(int(p in e.gold_set) for p, e in zip(predictions, chunk))
        batches += 1
    return (correct / len(examples) if examples else float("nan")), batches
