"""zobench: zeroth-order fine-tuning of language models on one fast, exact engine."""

__version__ = "0.2.0"
