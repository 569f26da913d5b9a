"""A task: a small YAML spec (lm-evaluation-harness style) turned into prompts and candidates.

Spec keys (``tasks/<name>.yaml``):

* ``name``, ``version`` (logged with every result), ``description``;
* ``dataset``: ``{path, name}`` of the Hugging Face dataset (``load_dataset(path, name)``);
  the local mirror reads ``<data.dir>/<task>/<split>.jsonl`` in the same schema;
* ``splits``: ``{train: <hf split>, eval: <hf split>}``: the pool the train/dev sets are
  sampled from and the split the test set is sampled from (MeZO's protocol);
* ``label_field``: the integer label of an example;
* ``prompt``: a Jinja template over the example's fields; the candidate is appended to it;
* ``candidates``: Jinja templates, candidate *i* being the answer for label *i*;
* ``metric``: ``accuracy`` (candidate scoring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import jinja2
import yaml

from ..errors import ConfigError

METRICS = ("accuracy",)
REQUIRED = ("name", "version", "dataset", "splits", "label_field", "prompt", "candidates", "metric")

# keep_trailing_newline: prompts such as RTE's end in "\n" and the candidate follows it
_JINJA = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)


@dataclass(frozen=True)
class Rendered:
    """One example as the objective sees it: the prompt, candidate continuations, gold index."""

    prompt: str
    candidates: tuple[str, ...]
    label: int
    gold: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: int
    dataset: dict
    splits: dict
    label_field: str
    prompt: str
    candidates: tuple[str, ...]
    metric: str
    description: str = ""
    source_file: str = field(default="", compare=False)

    @classmethod
    def from_yaml(cls, path: Path) -> "TaskSpec":
        raw = yaml.safe_load(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a task spec must be a mapping")
        missing = [k for k in REQUIRED if k not in raw]
        if missing:
            raise ConfigError(f"{path}: missing keys {missing}")
        unknown = sorted(set(raw) - set(REQUIRED) - {"description"})
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; allowed {list(REQUIRED) + ['description']}")
        if raw["metric"] not in METRICS:
            raise ConfigError(f"{path}: metric={raw['metric']!r}; allowed {', '.join(METRICS)}")
        if set(raw["splits"]) != {"train", "eval"}:
            raise ConfigError(f"{path}: splits must name exactly 'train' and 'eval'")
        return cls(**{**raw, "candidates": tuple(raw["candidates"]), "source_file": str(path)})

    @cached_property
    def _templates(self) -> tuple[jinja2.Template, tuple[jinja2.Template, ...]]:
        return _JINJA.from_string(self.prompt), tuple(_JINJA.from_string(c) for c in self.candidates)

    @property
    def families(self) -> tuple[str, ...]:
        return ("causal",)

    objective = "classification"

    def render(self, example: dict, family: str = "causal") -> Rendered:
        if family not in self.families:
            raise ConfigError(f"task {self.name} has no {family}-LM prompt; it supports {', '.join(self.families)}")
        prompt, candidates = self._templates
        label = int(example[self.label_field])
        if not 0 <= label < len(candidates):
            raise ConfigError(f"task {self.name}: label {label} outside 0..{len(candidates) - 1}")
        return Rendered(prompt.render(**example), tuple(c.render(**example) for c in candidates), label)
