"""Model loading and training objectives."""

from .loading import DTYPES, load_model, load_tokenizer, torch_dtype
from .objective import CandidateScorer, Encoded, evaluate_accuracy

__all__ = ["CandidateScorer", "DTYPES", "Encoded", "evaluate_accuracy", "load_model", "load_tokenizer",
           "torch_dtype"]
