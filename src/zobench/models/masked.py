"""Prompt-based classification with a masked LM (LM-BFF, Gao et al. 2021; MeZO's RoBERTa setup).

The input is a template with one mask slot, e.g. ``<s>{sentence} It was <mask>.</s>``, and each
label has a verbaliser word (terrible / great). With h the encoder's output at the mask and
w_k the token of label k's word (tokenised with a leading space, as LM-BFF does), the label
logits are the MLM head's logits of those tokens,  s_k = head(h)[w_k];  prediction = argmax_k s_k
and the training loss is cross-entropy of softmax(s) against the gold label (LM-BFF
``RobertaForPromptFinetuning``, MeZO medium_models).

Only the mask position goes through the MLM head: a forward pre-hook on the head selects it,
so the vocabulary projection costs one row per example instead of one per token (the authors'
code projects every position, then reads one).

Over-long inputs (more than ``max_length`` tokens with the special tokens) lose tokens from the far
end of the longer side of the mask, so the mask and the text next to it always survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..tasks import Rendered
from .causal import classification_loss, evaluate_accuracy
from .introspect import hf_model

MASK_PLACEHOLDER = "<mask>"


@dataclass(frozen=True)
class MaskedEncoded:
    ids: tuple[int, ...]
    mask_position: int
    words: tuple[int, ...]  # verbaliser token of each candidate label
    label: int

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def gold_set(self) -> tuple[int, ...]:
        return (self.label,)


def mlm_head(model) -> torch.nn.Module:
    """The module mapping encoder states to vocabulary logits (``lm_head`` / ``cls``)."""
    inner = hf_model(model)
    for name in ("lm_head", "cls"):
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ConfigError(f"{type(inner).__name__} has no masked-LM head (lm_head / cls); it cannot score verbalisers")


class MaskedScorer:
    """Verbaliser scoring at the mask token: ``encode``, ``loss``, ``scores``, ``predict``, ``evaluate``."""

    metric = "accuracy"

    def __init__(self, model, tokenizer, max_length: int, device: torch.device | str) -> None:
        if tokenizer.mask_token is None:
            raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no mask token; a masked-LM task needs one")
        self.model, self.tokenizer = model, tokenizer
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._selected: torch.Tensor | None = None
        mlm_head(model).register_forward_pre_hook(self._select_mask_states)
        self._word_ids: dict[str, int] = {}
        # the special tokens around a text (<s> ... </s> for RoBERTa), read off an encoded mask
        marker = tokenizer.encode(tokenizer.mask_token)
        at = marker.index(tokenizer.mask_token_id)
        self._prefix, self._suffix = marker[:at], marker[at + 1 :]

    # -- encoding -----------------------------------------------------------------------------
    def _word(self, word: str) -> int:
        if word not in self._word_ids:
            ids = self.tokenizer.encode(" " + word, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(
                    f"verbaliser word {word!r} is {len(ids)} tokens for {type(self.tokenizer).__name__}; "
                    "LM-BFF scoring needs one token per label word"
                )
            self._word_ids[word] = ids[0]
        return self._word_ids[word]

    def encode(self, example: Rendered) -> MaskedEncoded:
        if example.prompt.count(MASK_PLACEHOLDER) != 1:
            raise ConfigError(f"a masked-LM prompt needs exactly one {MASK_PLACEHOLDER}: {example.prompt[:80]!r}")
        before, after = example.prompt.split(MASK_PLACEHOLDER)
        tok = self.tokenizer
        # "It was <mask>.": the mask token absorbs the space before it (RoBERTa's <mask> strips left)
        left = tok.encode(before.rstrip(" "), add_special_tokens=False) if before.strip() else []
        right = tok.encode(after, add_special_tokens=False) if after else []
        room = self.max_length - 1 - len(self._prefix) - len(self._suffix)
        while len(left) + len(right) > room:  # drop from the far end of the longer side
            if len(left) >= len(right):
                left = left[1:]
            else:
                right = right[:-1]
        ids = self._prefix + left + [tok.mask_token_id] + right + self._suffix
        return MaskedEncoded(
            tuple(ids), len(self._prefix) + len(left), tuple(self._word(w) for w in example.candidates), example.label
        )

    # -- model call ---------------------------------------------------------------------------
    def _select_mask_states(self, module, args):
        if self._selected is None:
            return None
        hidden = args[0]
        self._mask_states = hidden[torch.arange(hidden.shape[0], device=hidden.device), self._selected]
        return (self._mask_states.unsqueeze(1),) + args[1:]

    def scores(self, batch: Sequence[MaskedEncoded], replicas: int = 1) -> torch.Tensor:
        """Label-word logits at the mask, shape (B, K_max) (``replicas`` > 1: the batch repeated
        replica-major in one call, shape (R, B, K_max)); missing labels are -inf."""
        width = max(e.length for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            ids[row, : e.length] = torch.tensor(e.ids)
            mask[row, : e.length] = 1
        ids, mask = ids.repeat(replicas, 1), mask.repeat(replicas, 1)
        self._selected = torch.tensor([e.mask_position for e in batch] * replicas, device=self.device)
        try:
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits[:, 0]
        finally:
            self._selected = None
        logits = logits.float().cpu()
        k_max = max(len(e.words) for e in batch)
        out = torch.stack(
            [
                F.pad(logits[i, torch.tensor(e.words)], (0, k_max - len(e.words)), value=float("-inf"))
                for i, e in enumerate(list(batch) * replicas)
            ]
        )
        return out if replicas == 1 else out.view(replicas, len(batch), k_max)

    def features(self, batch: Sequence[MaskedEncoded]) -> torch.Tensor:
        """The encoder's output at the mask, (B, hidden), float32 (linear probing)."""
        self.scores(batch)
        return self._mask_states.float().cpu()

    def loss(self, batch: Sequence[MaskedEncoded], replicas: int = 1) -> torch.Tensor:
        return classification_loss(self.scores(batch, replicas), batch)

    def predict(self, batch: Sequence[MaskedEncoded]) -> list[int]:
        return self.scores(batch).argmax(dim=-1).tolist()

    def loss_count(self, batch: Sequence[MaskedEncoded]) -> int:
        """``loss`` is a mean over examples (``dist/data.py`` weights shards by it)."""
        return len(batch)

    def example_scores(self, batch: Sequence[MaskedEncoded]) -> dict[str, list[float]]:
        """Per-example accuracy (1.0 / 0.0) of one evaluation batch (``dist/evaluation.py``)."""
        with torch.no_grad():
            predictions = self.predict(batch)
        return {"accuracy": [float(p == e.label) for p, e in zip(predictions, batch)]}

    def batch_metric(self, batch: Sequence[MaskedEncoded]) -> float:
        return sum(int(p == e.label) for p, e in zip(self.predict(batch), batch)) / len(batch)

    def evaluate(self, examples: Sequence[MaskedEncoded], batch_size: int) -> dict:
        accuracy, _ = evaluate_accuracy(self, examples, batch_size)
        return {"accuracy": accuracy}
