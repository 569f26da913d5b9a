"""Model loading, tuning (full / LoRA / prefix) and training objectives."""

from .causal import CandidateScorer, Encoded, evaluate_accuracy
from .generation import GenerationObjective
from .introspect import hf_model
from .loading import DTYPES, load_model, load_tokenizer, torch_dtype
from .masked import MaskedScorer
from .objective import ZO_OBJECTIVES, build_objective, with_demonstrations, zo_closure, zo_loss
from .tuning import TUNINGS, apply_tuning, trainable

__all__ = [
    "CandidateScorer",
    "DTYPES",
    "Encoded",
    "GenerationObjective",
    "MaskedScorer",
    "TUNINGS",
    "ZO_OBJECTIVES",
    "apply_tuning",
    "build_objective",
    "evaluate_accuracy",
    "hf_model",
    "load_model",
    "load_tokenizer",
    "torch_dtype",
    "trainable",
    "with_demonstrations",
    "zo_closure",
    "zo_loss",
]
