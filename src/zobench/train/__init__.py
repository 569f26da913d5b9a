"""The training loop as a recipe: ``Recipe`` (setup, train, finish), ``LoopState`` (what a
checkpoint holds), and the learners behind ``step(batch) -> (loss, info)``."""

from .learners import BackpropLearner, Learner, ZOLearner, build_learner
from .recipe import Recipe
from .state import LoopState

__all__ = ["BackpropLearner", "Learner", "LoopState", "Recipe", "ZOLearner", "build_learner"]
