"""Generative QA with a causal LM (SQuAD, DROP): LM loss on the answer, greedy decoding to evaluate.

Training loss (MeZO, non-classification tasks): the mean negative log-likelihood of the gold
answer's tokens given the prompt, averaged over every answer token of the batch, exactly the
``lm`` objective of candidate scoring with one candidate (the target).

Evaluation: greedy decoding of at most ``max_new_tokens`` tokens after the prompt, the text cut at
the first stop string (MeZO stops at a newline), scored by SQuAD's F1 and exact match against
every reference answer (max over references). Prompts keep their last
``max_length - max_new_tokens`` tokens (and BOS), so the answer always has room.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..tasks import Rendered
from ..tasks.batches import eval_batches
from ..tasks.metrics import exact_match, squad_f1
from .causal import CandidateScorer, Encoded


@dataclass(frozen=True)
class GenerationEncoded(Encoded):
    prompt_ids: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        return len(self.prompt_ids)


class GenerationObjective(CandidateScorer):
    """``loss`` on the target continuation; ``evaluate`` by greedy decoding → F1 / EM."""

    metric = "f1"

    def __init__(self, model, tokenizer, max_length: int, device, max_new_tokens: int, stop=("\n",)) -> None:
        super().__init__(model, tokenizer, max_length, device, objective="lm")
        self.max_new_tokens = int(max_new_tokens)
        self.stop = tuple(stop)

    def encode(self, example: Rendered) -> GenerationEncoded:
        target = super().encode(example)  # context + target tokens for the loss
        prompt = self.tokenizer.encode(example.prompt)
        room = self.max_length - self.max_new_tokens
        if len(prompt) > room:
            prompt = prompt[:1] + prompt[1:][-(room - 1) :] if self.keeps_bos else prompt[-room:]
        return GenerationEncoded(
            target.contexts, target.options, target.label, (), tuple(prompt), tuple(example.answers)
        )

    def cut(self, text: str) -> str:
        for stop in self.stop:
            text = text.split(stop)[0]
        return text.strip()

    def generate(self, batch: Sequence[GenerationEncoded]) -> list[str]:
        """Greedy continuations (cut at the stop strings) of left-padded prompts."""
        width = max(len(e.prompt_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            ids[row, width - len(e.prompt_ids) :] = torch.tensor(e.prompt_ids)
            mask[row, width - len(e.prompt_ids) :] = 1
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.pad_id,
                stop_strings=list(self.stop) or None,
                tokenizer=self.tokenizer,
            )
        new = out[:, width:].cpu()
        return [self.cut(self.tokenizer.decode(row, skip_special_tokens=True)) for row in new]

    def batch_metric(self, batch: Sequence[GenerationEncoded]) -> float:  # type: ignore[override]  # its task's encodings
        return sum(squad_f1(p, e.answers) for p, e in zip(self.generate(batch), batch)) / len(batch)

    def example_scores(self, batch: Sequence[GenerationEncoded]) -> dict[str, list[float]]:  # type: ignore[override]  # its task's encodings
        """Per-example F1 and EM of one evaluation batch (``dist/evaluation.py``)."""
        predictions = self.generate(batch)
        return {
            "f1": [float(squad_f1(p, e.answers)) for p, e in zip(predictions, batch)],
            "em": [float(exact_match(p, e.answers)) for p, e in zip(predictions, batch)],
        }

    def evaluate(self, examples: Sequence[GenerationEncoded], batch_size: int) -> dict:  # type: ignore[override]  # its task's encodings
        f1 = em = 0.0
        for indices in eval_batches(examples, batch_size):
            chunk = [examples[i] for i in indices]
            for prediction, e in zip(self.generate(chunk), chunk):
                f1 += squad_f1(prediction, e.answers)
                em += exact_match(prediction, e.answers)
        n = max(len(examples), 1)
        return {"f1": f1 / n, "em": em / n} if examples else {"f1": float("nan"), "em": float("nan")}
