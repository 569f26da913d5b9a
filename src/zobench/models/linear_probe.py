"""Linear probing (LP), the baseline row of MeZO Tables 1 and 18.

The frozen model maps an example to the hidden state h that its LM head reads at the scored
position (causal LM: the last prompt token; masked LM: the mask token). LP fits a multinomial
logistic regression  p(y = k | h) = softmax(W h + b)_k  on the training examples' features, with
the L2 strength chosen by cross-validation (scikit-learn's ``LogisticRegressionCV``, as MeZO's
linear-probing code does), and predicts argmax_k (W h + b)_k. No gradient touches the model and
no ZO step is taken: ``train.steps`` must be 0, and the probe is fitted before evaluation (the
recipe's probing mode, ``train/recipe.py::Recipe.setup_learner``), then replaces the objective.

Only classification tasks with a fixed label set have a probe (candidates = classes); tasks whose
candidates vary per example (COPA, ReCoRD) or generation tasks are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError


class LinearProbe:
    """A fitted probe over ``objective.features``; ``evaluate`` like every objective."""

    metric = "accuracy"

    def __init__(self, objective, classifier) -> None:
        self.objective, self.classifier = objective, classifier

    def features(self, examples: Sequence, batch_size: int) -> np.ndarray:
        return extract_features(self.objective, examples, batch_size)

    def evaluate(self, examples: Sequence, batch_size: int) -> dict:
        if not examples:
            return {"accuracy": float("nan")}
        predicted = self.classifier.predict(self.features(examples, batch_size))
        return {"accuracy": float(np.mean(predicted == np.array([e.label for e in examples])))}

    def loss(self, batch, replicas: int = 1):
        """Cross-entropy of the probe on a batch (the inference-memory probe of the loop calls it)."""
        probabilities = self.classifier.predict_proba(self.features(batch, len(batch)))
        index = np.searchsorted(self.classifier.classes_, [e.label for e in batch])
        return torch.tensor(-np.log(probabilities[np.arange(len(batch)), index] + 1e-12).mean())


def extract_features(objective, examples: Sequence, batch_size: int) -> np.ndarray:
    """The LM-head input at the scored position of every example, float64, in order."""
    if not hasattr(objective, "features"):
        raise ConfigError(
            f"{type(objective).__name__} has no features to probe; linear probing needs a classification task"
        )
    out = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            out.append(objective.features(examples[start : start + batch_size]).double().numpy())
    return np.concatenate(out)


def fit_linear_probe(
    objective, train: Sequence, batch_size: int, seed: int = 0, folds: int = 5, max_iter: int = 1000
) -> LinearProbe:
    """Fit the probe on ``train`` (encoded examples of a classification task)."""
    from sklearn.linear_model import LogisticRegressionCV

    if getattr(objective, "objective", "classification") != "classification":
        raise ConfigError(
            "optimizer=linear_probe needs a classification task (a fixed set of labels); "
            f"this task trains with objective {objective.objective!r}"
        )
    if len({len(getattr(e, "options", getattr(e, "words", ()))) for e in train}) != 1:
        raise ConfigError("optimizer=linear_probe needs the same candidates for every example (classes)")
    if not train:
        raise ConfigError("optimizer=linear_probe needs training examples to fit on (data.num_train > 0)")
    labels = np.array([e.label for e in train])
    if len(set(labels.tolist())) < 2:
        raise ConfigError("optimizer=linear_probe: the training examples hold a single class; nothing to fit")
    features = extract_features(objective, train, batch_size)
    folds = max(2, min(folds, int(np.bincount(labels).min())))  # each fold needs every class
    # log-loss, not accuracy, picks C: accuracy ties across C on separable data and the tie would go
    # to the strongest regularisation
    classifier = LogisticRegressionCV(Cs=10, cv=folds, max_iter=max_iter, random_state=seed, scoring="neg_log_loss")
    classifier.fit(features, labels)
    return LinearProbe(objective, classifier)
