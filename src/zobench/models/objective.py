"""Candidate scoring for causal LMs (MeZO's "train as classification" objective).

For an example with prompt x and candidates c_1..c_K, the score of c_k is its mean token
log-likelihood  s_k = (1/|c_k|) Σ_t log p(c_k,t | x, c_k,<t).  Prediction = argmax_k s_k;
training loss = cross-entropy of softmax(s) against the gold candidate (MeZO,
large_models/utils.py ``forward_wrap_with_option_len``, with its length normalisation).

Tokenisation follows MeZO's ``encode_prompt``: prompt+candidate is tokenised as one string and the
candidate is its last ``len(enc(prompt+cand)) - len(enc(prompt))`` tokens; over-long inputs keep
the BOS token and the last ``max_length - 1`` tokens.

Fast path: when every candidate of every example in a batch is one token and the contexts are
identical (SST-2, RTE, most classification prompts), the prompt runs once and each candidate is
read from the last position's logits: one sequence per example instead of one per candidate,
and logits only at one position. Both paths run exactly one model forward per batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..tasks import Rendered


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example: per-candidate context and continuation, and the gold index."""

    contexts: tuple[tuple[int, ...], ...]
    options: tuple[tuple[int, ...], ...]
    label: int

    @property
    def shared_single_token(self) -> bool:
        return all(len(o) == 1 for o in self.options) and len(set(self.contexts)) == 1

    @property
    def length(self) -> int:
        return max(len(c) + len(o) for c, o in zip(self.contexts, self.options))


class CandidateScorer:
    """Scores candidates with a causal LM; ``loss``, ``scores`` and ``predict`` on encoded batches."""

    def __init__(self, model, tokenizer, max_length: int, device: torch.device | str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        probe = tokenizer.encode("a")
        self.keeps_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
        accepted = inspect.signature(model.forward).parameters
        self._takes_positions = "position_ids" in accepted
        self._takes_logits_to_keep = "logits_to_keep" in accepted

    # -- encoding -----------------------------------------------------------------------------
    def _truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_length:
            return ids
        if self.keeps_bos:
            return ids[:1] + ids[1:][-(self.max_length - 1):]
        return ids[-self.max_length:]

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
        return Encoded(tuple(contexts), tuple(options), example.label)

    # -- model call ---------------------------------------------------------------------------
    def _forward(self, sequences: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Log-probabilities (float32) at the last ``keep`` positions of left-padded sequences."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
        kwargs = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
        if self._takes_positions:  # left padding: positions count real tokens only
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs).logits[:, -keep:]
        return F.log_softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def scores(self, batch: Sequence[Encoded]) -> torch.Tensor:
        """Mean log-likelihood per candidate, shape (B, K_max); missing candidates are -inf."""
        k_max = max(len(e.options) for e in batch)
        out = torch.full((len(batch), k_max), float("-inf"))
        if all(e.shared_single_token for e in batch):
            logprobs = self._forward([e.contexts[0] for e in batch], keep=1)[:, 0].cpu()
            for row, e in enumerate(batch):
                tokens = torch.tensor([o[0] for o in e.options])
                out[row, : len(e.options)] = logprobs[row, tokens]
            return out
        pairs = [(row, k, c, o) for row, e in enumerate(batch)
                 for k, (c, o) in enumerate(zip(e.contexts, e.options))]
        keep = max(len(o) for _, _, _, o in pairs) + 1
        logprobs = self._forward([c + o for _, _, c, o in pairs], keep=keep).cpu()
        for i, (row, k, _, option) in enumerate(pairs):
            n = len(option)
            # the token at position T-n+t is predicted by position T-n+t-1, kept index keep-n+t-1
            positions = torch.arange(keep - n - 1, keep - 1)
            out[row, k] = logprobs[i, positions, torch.tensor(option)].mean()
        return out

    def loss(self, batch: Sequence[Encoded]) -> torch.Tensor:
        labels = torch.tensor([e.label for e in batch])
        return F.cross_entropy(self.scores(batch), labels)

    def predict(self, batch: Sequence[Encoded]) -> list[int]:
        return self.scores(batch).argmax(dim=-1).tolist()


def evaluate_accuracy(scorer: CandidateScorer, examples: Sequence[Encoded], batch_size: int) -> tuple[float, int]:
    """Accuracy over ``examples`` and the number of model forwards it took.

    Batches are formed from length-sorted examples (less padding); order does not change any
    prediction.
    """
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    correct = batches = 0
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        correct += sum(int(p == e.label) for p, e in zip(scorer.predict(chunk), chunk))
        batches += 1
    return (correct / len(examples) if examples else float("nan")), batches
