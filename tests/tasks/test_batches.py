"""tasks/batches.py: the one length-sorted evaluation batching every evaluator uses."""

from types import SimpleNamespace

from zobench.tasks.batches import eval_batches


def test_evaluation_batches_are_length_sorted_runs_with_ties_in_order():
    examples = [SimpleNamespace(length=n) for n in (5, 2, 9, 2, 5, 1, 7)]
    assert eval_batches(examples, 3) == [[5, 1, 3], [0, 4, 6], [2]]
    assert eval_batches(examples, 10) == [[5, 1, 3, 0, 4, 6, 2]]
    assert eval_batches([], 4) == []


def test_every_evaluator_batches_with_the_same_function():
    """Sharded evaluation equals one process bit for bit only while both cut the same batches."""
    from zobench.dist import evaluation
    from zobench.models import causal, generation

    assert causal.eval_batches is generation.eval_batches is evaluation.eval_batches is eval_batches
