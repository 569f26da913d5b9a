"""The learners the recipe steps, behind ``step(batch) -> (loss, info)``. They are built by the
factory (``zobench.build``, ``build_learner``) and defined beside it (``build/learners.py``);
this module names them where the training loop's code looks for them."""

from ..build.learners import BackpropLearner, Learner, ZOLearner

__all__ = ["BackpropLearner", "Learner", "ZOLearner"]
