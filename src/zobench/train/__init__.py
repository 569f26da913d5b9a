"""The training loop as a recipe: ``Recipe`` (setup, train, finish), ``LoopState`` (what a
checkpoint holds), and the learners behind ``step(batch) -> (loss, info)`` (built by
``zobench.build``)."""

from .learners import BackpropLearner, Learner, ZOLearner
from .recipe import Recipe
from .state import LoopState

__all__ = ["BackpropLearner", "Learner", "LoopState", "Recipe", "ZOLearner"]
