"""Generation objective (SQuAD / DROP): LM loss on the answer and greedy decoding."""

import pytest
import torch
import torch.nn.functional as F

from zobench.models import CandidateScorer, GenerationObjective, load_model, with_demonstrations
from zobench.models.loading import model_config
from zobench.tasks import Rendered


@pytest.fixture(scope="module")
def llama():
    return load_model(model_config("tiny-llama"))


def _naive_nll(model, tokenizer, prompt, target):
    """Mean -log p(target tokens | prompt), one unpadded sequence (the reference)."""
    full = tokenizer.encode(prompt + target)
    n = len(full) - len(tokenizer.encode(prompt))
    logprobs = F.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
    return -torch.stack([logprobs[len(full) - n + t - 1, full[len(full) - n + t]] for t in range(n)])


def test_lm_loss_is_the_token_mean_nll_of_the_gold_continuation(llama):
    model, tokenizer = llama
    examples = [
        Rendered("The cat sat on the", (" mat", " big red sofa"), 1),
        Rendered("Paris is the capital of", (" France", " Spain"), 0),
    ]
    scorer = CandidateScorer(model, tokenizer, 64, "cpu", objective="lm")
    with torch.no_grad():
        loss = scorer.loss([scorer.encode(e) for e in examples])
        expected = torch.cat([_naive_nll(model, tokenizer, e.prompt, e.candidates[e.label]) for e in examples]).mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_greedy_generation_equals_a_step_by_step_argmax(llama):
    model, tokenizer = llama
    objective = GenerationObjective(model, tokenizer, 64, "cpu", max_new_tokens=6, stop=())
    prompts = ["Title: x\nQuestion: who?\nAnswer:", "Passage: a b c\nAnswer:"]
    batch = [objective.encode(Rendered(p, (" yes",), 0, answers=("yes",))) for p in prompts]
    texts = objective.generate(batch)
    for prompt, text in zip(prompts, texts):
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            for _ in range(6):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert text == tokenizer.decode(ids[len(tokenizer.encode(prompt)) :], skip_special_tokens=True).strip()


def test_generation_is_cut_at_the_stop_string(llama):
    objective = GenerationObjective(*llama, 64, "cpu", max_new_tokens=4)
    assert objective.cut(" Denver Broncos\nQuestion: next") == "Denver Broncos"


def test_long_prompts_leave_room_for_the_answer(llama):
    objective = GenerationObjective(*llama, 32, "cpu", max_new_tokens=10)
    e = objective.encode(Rendered("word " * 100 + "Answer:", (" x",), 0, answers=("x",)))
    assert len(e.prompt_ids) == 22


def test_icl_prepends_stripped_demonstrations_as_mezo_does():
    demos = [
        Rendered("good film It was", (" terrible", " great"), 1),
        Rendered("bad film It was", (" terrible", " great"), 0),
    ]
    shown = with_demonstrations(Rendered("fine film It was", (" terrible", " great"), 1), demos)
    assert shown.prompt == "good film It was great\n\nbad film It was terrible\n\nfine film It was"
    assert shown.candidates == (" terrible", " great") and shown.label == 1
    assert with_demonstrations(demos[0], []) is demos[0]


def test_replicated_losses_equal_the_single_loss_when_nothing_is_perturbed(llama):
    """``loss(batch, replicas=N)``: one call on the batch repeated N times, one loss per replica."""
    model, tokenizer = llama
    shared = [
        Rendered("good film It was", (" terrible", " great"), 1),
        Rendered("bad one It was", (" terrible", " great"), 0),
    ]
    multi = [Rendered("The cat sat on the", (" mat", " big red sofa"), 1), Rendered("Paris is in", (" France",), 0)]
    for objective, examples in (("classification", shared), ("classification", multi), ("lm", multi)):
        scorer = CandidateScorer(model, tokenizer, 64, "cpu", objective=objective)
        batch = [scorer.encode(e) for e in examples]
        with torch.no_grad():
            single, replicated = scorer.loss(batch), scorer.loss(batch, replicas=3)
        assert replicated.shape == (3,)
        torch.testing.assert_close(replicated, single.repeat(3), rtol=1e-5, atol=1e-6)
