"""A faithful re-implementation of the authors' MeZO step (princeton-nlp/MeZO, large_models/
trainer.py ``zo_step`` / ``zo_perturb_parameters`` / ``zo_update`` and utils.py
``forward_wrap_with_option_len``), the baseline the benchmark compares zobench against.

What makes it the authors' and not ours:

* z from the *global* RNG: ``torch.manual_seed(seed)`` then ``torch.normal`` per parameter, in
  the parameter's dtype, regenerated for each of the 4 sweeps (+ε, -2ε, +ε, update);
* ``param.data = param.data + c * z * eps``: a new tensor per parameter per sweep (reallocation);
* one forward per (example, candidate) pair, right-padded, logits over the whole vocabulary at
  every position, log-softmax over all of them, then the candidate tokens gathered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models import Encoded


def pairwise_loss(model, batch: Sequence[Encoded], pad_id: int, device) -> torch.Tensor:
    """The authors' training loss: CE over mean candidate log-likelihoods, one sequence per pair."""
    sequences, option_lens, counts, labels = [], [], [], []
    for e in batch:
        for context, option in zip(e.contexts, e.options):
            sequences.append(list(context) + list(option))
            option_lens.append(len(option))
        counts.append(len(e.options))
        labels.append(e.label)
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):  # right padding, as the authors' collator
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # the whole vocabulary, every position
    targets = ids[:, 1:]
    token_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    option_mask = torch.zeros_like(token_lp, dtype=torch.bool)
    for row, (seq, n) in enumerate(zip(sequences, option_lens)):
        option_mask[row, len(seq) - 1 - n : len(seq) - 1] = True
    scores = (token_lp * option_mask).sum(-1) / option_mask.sum(-1)
    losses, start = [], 0
    for count, label in zip(counts, labels):
        losses.append(F.cross_entropy(scores[start : start + count].unsqueeze(0), torch.tensor([label], device=device)))
        start += count
    return torch.stack(losses).mean()


class AuthorsMeZO:
    """The authors' ``zo_step`` + ``zo_update`` on ``named_parameters`` (all trainable)."""

    def __init__(self, named_parameters, lr: float, eps: float, weight_decay: float = 0.0) -> None:
        self.named = list(named_parameters)
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.seconds = 0.0  # engine time: perturbation and update sweeps

    def _perturb(self, seed: int, scaling: float) -> None:
        torch.manual_seed(seed)
        for _, param in self.named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            param.data = param.data + scaling * z * self.eps

    @torch.no_grad()
    def step(self, closure, sync=None) -> float:
        import time

        def timed(fn, *args):
            if sync:
                sync()
            start = time.perf_counter()
            fn(*args)
            if sync:
                sync()
            self.seconds += time.perf_counter() - start

        seed = np.random.randint(1_000_000_000)
        timed(self._perturb, seed, 1)
        loss1 = float(closure())
        timed(self._perturb, seed, -2)
        loss2 = float(closure())
        projected_grad = (loss1 - loss2) / (2 * self.eps)
        timed(self._perturb, seed, 1)
        timed(self._update, seed, projected_grad)
        return loss1

    def _update(self, seed: int, projected_grad: float) -> None:
        torch.manual_seed(seed)
        for name, param in self.named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
                param.data = param.data - self.lr * (projected_grad * z + self.weight_decay * param.data)
            else:
                param.data = param.data - self.lr * (projected_grad * z)
