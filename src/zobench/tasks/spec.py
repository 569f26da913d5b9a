"""A task: a small YAML spec (lm-evaluation-harness style) turned into prompts and candidates.

Spec keys (``tasks/<name>.yaml``):

* ``name``, ``version`` (logged with every result), ``description``;
* ``dataset``: ``{path, name}`` of the Hugging Face dataset (``load_dataset(path, name)``);
  the local mirror reads ``<data.dir>/<task>/<split>.jsonl`` in the same schema;
* ``splits``: ``{train: <hf split>, eval: <hf split>}``: the pool train/dev are drawn from and
  the split the test set comes from;
* ``objective``: the causal-LM training loss: ``classification`` (cross-entropy over the
  candidates' scores), ``lm`` (NLL of the gold candidate's tokens) or ``generation`` (NLL of
  the target continuation; evaluated by greedy decoding);
* ``metric``: ``accuracy`` (candidate scoring) or ``f1`` (generation; ``em`` is reported too);
* ``generation``: ``{max_new_tokens, stop}`` for generation tasks;
* the gold answer, one of: ``label_field`` (integer label = candidate index), ``gold_field``
  (a list of correct candidate strings, ReCoRD: the label is the first one, MeZO's training
  target), ``answers_field`` (generation: the reference answers, a dotted path such as
  ``answers.text``);
* ``skip_labels``: label values whose rows are dropped when loading (SNLI's ``-1``: no gold);
* the run settings, which become the Hydra ``task`` group (``task=<name>``, overridable as
  ``task.<key>=...``; ``zobench.tasks.configs``): ``max_length`` (tokens per causal-LM input;
  longer ones keep BOS and the last tokens), ``masked_max_length`` (the same for masked LMs, only
  with a ``masked`` prompt; default ``max_length``) and ``num_dev`` (MeZO-protocol dev examples;
  default ``data.num_dev``'s 500);
* one block per prompt family, ``causal`` and/or ``masked``:
  ``{prompt: <Jinja template over the example's fields>, candidates: ...}`` where
  ``candidates`` is a list of templates (candidate *i* answers label *i*) or
  ``{for_each: <list field>, template: <template using `candidate`>}`` (ReCoRD's entities).

Causal prompts follow MeZO's ``encode_prompt`` (large_models/utils.py): the text scored is
``(prompt + candidate).lstrip().rstrip(" ")`` and the prompt is ``prompt.lstrip().rstrip(" ")``,
so a space that ends the prompt template moves onto the candidate. Masked prompts hold the
literal ``<mask>`` (exactly once) and no ``<s>``/``</s>``; their candidates are verbaliser words
without the leading space (the objective adds it, as LM-BFF does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import jinja2
import jinja2.meta
import yaml

from ..config.schema import MODEL_FAMILIES
from ..errors import ConfigError

FAMILIES = MODEL_FAMILIES  # a task has prompts for some of the model families
OBJECTIVES = ("classification", "lm", "generation")
METRICS = ("accuracy", "f1")
MASK = "<mask>"
REQUIRED = ("name", "version", "dataset", "splits", "objective", "metric", "max_length")
GOLD_KEYS = ("label_field", "gold_field", "answers_field")
RUN_KEYS = ("max_length", "masked_max_length", "num_dev")  # the Hydra `task` node, after `name`
OPTIONAL = ("description", "generation", "skip_labels", "masked_max_length", "num_dev", *GOLD_KEYS, *FAMILIES)


def lower_first_word(text: str) -> str:
    """MeZO's CopaTemplate.capitalize: lower-case the first space-separated word unless it is "I"."""
    words = text.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


# keep_trailing_newline: prompts such as RTE's end in "\n" and the candidate follows it
_JINJA = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)
_JINJA.filters["lower_first_word"] = lower_first_word


def _compile(text, where: str) -> jinja2.Template:
    """``text`` as a Jinja template; not a string, or a syntax error: one line naming ``where``."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}={text!r}; expected a Jinja template string")
    try:
        return _JINJA.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(
            f"{where}: Jinja syntax error at template line {err.lineno}: {err.message} "
            f"(templates are Jinja expressions over the example's fields, e.g. {{{{ sentence | trim }}}})"
        ) from err


def field_path(example: dict, path: str):
    """``example["answers"]["text"]`` for ``path="answers.text"``."""
    value = example
    for key in path.split("."):
        value = value[key]
    return value


@dataclass(frozen=True)
class Rendered:
    """One example as the objective sees it.

    ``prompt``: causal: the context; masked: the input text with the literal ``<mask>``, without
    special tokens. ``candidates``: causal: continuations appended to the prompt (leading spaces
    included); masked: verbaliser words without leading space; generation: ``(gold target,)``.
    ``label``: index of the training target. ``gold``: every acceptable candidate index (() means
    ``(label,)``). ``answers``: generation: every reference answer (for F1 / EM).
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int
    gold: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()

    @property
    def gold_indices(self) -> tuple[int, ...]:
        return self.gold or (self.label,)


@dataclass(frozen=True)
class PromptFormat:
    """One family's prompt template and candidates (fixed list or one per element of a field)."""

    prompt: str
    candidates: tuple[str, ...] = ()
    for_each: str | None = None
    template: str | None = None

    @classmethod
    def from_raw(cls, raw, where: str) -> PromptFormat:
        """The family block ``{prompt, candidates}``; every template is compiled here, so a Jinja
        syntax error is one line naming the file and field when the spec is loaded (at start)."""
        if not isinstance(raw, dict) or set(raw) != {"prompt", "candidates"}:
            raise ConfigError(f"{where}: expected exactly the keys prompt and candidates")
        cands = raw["candidates"]
        if isinstance(cands, dict):
            if set(cands) != {"for_each", "template"}:
                raise ConfigError(f"{where}.candidates: a mapping needs exactly for_each and template")
            if not isinstance(cands["for_each"], str) or not cands["for_each"]:
                raise ConfigError(f"{where}.candidates.for_each={cands['for_each']!r}; expected a field name")
            fmt = cls(raw["prompt"], for_each=cands["for_each"], template=cands["template"])
            fields = {"prompt": fmt.prompt, "candidates.template": fmt.template}
        else:
            if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
                raise ConfigError(f"{where}.candidates: expected a non-empty list of strings or {{for_each, template}}")
            fmt = cls(raw["prompt"], candidates=tuple(cands))
            fields = {"prompt": fmt.prompt, **{f"candidates[{i}]": c for i, c in enumerate(cands)}}
        for name, text in fields.items():
            _compile(text, f"{where}.{name}")
        return fmt

    @cached_property
    def fields(self) -> frozenset[str]:
        """The variables the prompt and candidate templates read (``candidate`` included)."""
        sources = (self.prompt, *self.candidates, *([self.template] if self.template else []))
        return frozenset().union(*(jinja2.meta.find_undeclared_variables(_JINJA.parse(s)) for s in sources))

    @cached_property
    def _compiled(self):
        templates = (self.template,) if self.for_each else self.candidates
        return _JINJA.from_string(self.prompt), tuple(_JINJA.from_string(t) for t in templates)

    def render(self, example: dict) -> tuple[str, tuple[str, ...]]:
        prompt, templates = self._compiled
        try:
            if self.for_each:
                cands = tuple(templates[0].render(**example, candidate=c) for c in field_path(example, self.for_each))
            else:
                cands = tuple(t.render(**example) for t in templates)
            return prompt.render(**example), cands
        except (jinja2.TemplateError, KeyError, TypeError, ValueError, AttributeError) as err:
            # a field the template needs is missing, or of a type its expression cannot take
            # (``{{ label + 1 }}`` on a string): the example and the template disagree
            raise ConfigError(f"example does not fit the template ({err}); fields: {', '.join(example)}") from err


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: int
    dataset: dict
    splits: dict
    objective: str
    metric: str
    max_length: int
    formats: dict = field(default_factory=dict)  # family -> PromptFormat
    label_field: str | None = None
    gold_field: str | None = None
    answers_field: str | None = None
    skip_labels: tuple = ()
    generation: dict = field(default_factory=dict)
    description: str = ""
    masked_max_length: int | None = None
    num_dev: int | None = None
    source_file: str = field(default="", compare=False)

    @classmethod
    def from_yaml(cls, path: Path) -> TaskSpec:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a task spec must be a mapping")
        missing = [k for k in REQUIRED if k not in raw]
        if missing:
            raise ConfigError(f"{path}: missing keys {missing}")
        unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; allowed {list(REQUIRED) + list(OPTIONAL)}")
        _check_fields(raw, path)
        if raw["metric"] not in METRICS:
            raise ConfigError(f"{path}: metric={raw['metric']!r}; allowed {', '.join(METRICS)}")
        if raw["objective"] not in OBJECTIVES:
            raise ConfigError(f"{path}: objective={raw['objective']!r}; allowed {', '.join(OBJECTIVES)}")
        if not isinstance(raw["splits"], dict) or set(raw["splits"]) != {"train", "eval"}:
            raise ConfigError(f"{path}: splits must name exactly 'train' and 'eval'")
        gold_keys = [k for k in GOLD_KEYS if k in raw]
        if len(gold_keys) != 1:
            raise ConfigError(f"{path}: exactly one of {', '.join(GOLD_KEYS)} is needed, got {gold_keys or 'none'}")
        generative = raw["objective"] == "generation"
        if generative != ("answers_field" in raw) or generative != (raw["metric"] == "f1"):
            raise ConfigError(
                f"{path}: objective generation goes with answers_field and metric f1 (and only with them)"
            )
        if generative != ("generation" in raw):
            raise ConfigError(
                f"{path}: generation: {{max_new_tokens, stop}} is required for (and only for) objective generation"
            )
        formats = {f: PromptFormat.from_raw(raw[f], f"{path}: {f}") for f in FAMILIES if f in raw}
        if not formats:
            raise ConfigError(f"{path}: no prompt family; give at least one of {', '.join(FAMILIES)}")
        if "masked" in formats and formats["masked"].prompt.count(MASK) != 1:
            raise ConfigError(f"{path}: masked.prompt must contain {MASK} exactly once")
        if generative and (formats["causal"].for_each or len(formats["causal"].candidates) != 1):
            raise ConfigError(f"{path}: a generation task has exactly one candidate, its target")
        if ("gold_field" in raw) != any(fmt.for_each for fmt in formats.values()):
            raise ConfigError(f"{path}: gold_field goes with candidates: {{for_each, template}} (and only with it)")
        _check_run_settings(raw, formats, path)
        known = {k: raw[k] for k in REQUIRED + ("description", "generation", *GOLD_KEYS, *RUN_KEYS) if k in raw}
        return cls(**known, formats=formats, skip_labels=tuple(raw.get("skip_labels", ())), source_file=str(path))

    def run_config(self) -> dict:
        """The Hydra ``task`` node: ``name`` and the run settings the file sets, in RUN_KEYS order."""
        settings = {key: getattr(self, key) for key in RUN_KEYS if getattr(self, key) is not None}
        return {"name": self.name, **settings}

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in FAMILIES if f in self.formats)

    @cached_property
    def template_fields(self) -> tuple[str, ...]:
        """Top-level fields any prompt or candidate template reads (``candidate`` is ReCoRD's loop
        variable, not a field); parsed once per spec."""
        return tuple(sorted(frozenset().union(*(f.fields for f in self.formats.values())) - {"candidate"}))

    def keep(self, example: dict) -> bool:
        """False for rows without a gold label (``skip_labels``), e.g. the hub's SNLI label -1."""
        return not (self.label_field and example[self.label_field] in self.skip_labels)

    def render(self, example: dict, family: str = "causal") -> Rendered:
        if family not in self.formats:
            raise ConfigError(f"task {self.name}: no {family!r} prompt; this task has {', '.join(self.families)}")
        try:
            prompt, candidates = self.formats[family].render(example)
        except ConfigError as err:
            raise ConfigError(f"task {self.name} ({family} prompt): {err}") from err
        if family == "causal":
            prompt, candidates = _mezo_boundary(prompt, candidates)
        if self.answers_field:
            answers = tuple(field_path(example, self.answers_field))
            if not answers:
                raise ConfigError(f"task {self.name}: example without reference answers ({self.answers_field})")
            return Rendered(prompt, candidates, 0, answers=answers)
        if self.gold_field:
            return self._render_gold(example, prompt, candidates, self.gold_field)
        label = int(example[self.label_field])
        if not 0 <= label < len(candidates):
            raise ConfigError(f"task {self.name}: label {label} outside 0..{len(candidates) - 1}")
        return Rendered(prompt, candidates, label)

    def _render_gold(self, example: dict, prompt: str, candidates: tuple[str, ...], gold_field: str) -> Rendered:
        """ReCoRD: candidates are the entities; every answer is gold, the first one is trained on
        (MeZO run.py ``_convert``: ``candidates.index(correct_candidate[0])``)."""
        pool = list(field_path(example, next(f.for_each for f in self.formats.values() if f.for_each)))
        answers = list(field_path(example, gold_field))
        missing = [a for a in answers if a not in pool]
        if not answers or missing:
            raise ConfigError(f"task {self.name}: gold answers {missing or answers} not among the candidates")
        gold = tuple(pool.index(a) for a in answers)
        return Rendered(prompt, candidates, gold[0], gold=gold)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_fields(raw: dict, path: Path) -> None:
    """The type of every key but the prompt blocks (those: ``PromptFormat.from_raw``): what is
    logged with the results (``name``, ``version``) and what loading the data reads."""
    if not isinstance(raw["name"], str) or not raw["name"]:
        raise ConfigError(f"{path}: name={raw['name']!r}; expected the file's name")
    if not _positive_int(raw["version"]):
        raise ConfigError(f"{path}: version={raw['version']!r}; a positive integer is needed (e.g. version: 1)")
    if not isinstance(raw.get("description", ""), str):
        raise ConfigError(f"{path}: description={raw['description']!r}; expected a string")
    dataset = raw["dataset"]
    if (
        not isinstance(dataset, dict)
        or not isinstance(dataset.get("path"), str)
        or not set(dataset) <= {"path", "name"}
        or not isinstance(dataset.get("name", ""), (str, type(None)))
    ):
        raise ConfigError(f"{path}: dataset={dataset!r}; expected {{path: <hub dataset>, name: <its config>}}")
    splits = raw["splits"]
    if isinstance(splits, dict) and not all(isinstance(v, str) and v for v in splits.values()):
        raise ConfigError(f"{path}: splits={splits!r}; each split is the name of a dataset split")
    for key in GOLD_KEYS:
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            raise ConfigError(f"{path}: {key}={raw[key]!r}; expected a field name")
    if "skip_labels" in raw and not isinstance(raw["skip_labels"], list):
        raise ConfigError(f"{path}: skip_labels={raw['skip_labels']!r}; expected a list of label values")
    generation = raw.get("generation")
    if generation is not None and (
        not isinstance(generation, dict)
        or set(generation) != {"max_new_tokens", "stop"}
        or not _positive_int(generation["max_new_tokens"])
        or not isinstance(generation["stop"], list)
        or not all(isinstance(s, str) for s in generation["stop"])
    ):
        raise ConfigError(
            f"{path}: generation={generation!r}; expected {{max_new_tokens: <positive integer>, stop: [<strings>]}}"
        )


def _check_run_settings(raw: dict, formats: dict, path: Path) -> None:
    """The run settings are positive integers; ``masked_max_length`` needs a masked prompt."""
    for key in RUN_KEYS:
        value = raw.get(key)
        if key in raw and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{path}: {key}={value!r}; a positive integer is needed")
    if "masked_max_length" in raw and "masked" not in formats:
        raise ConfigError(f"{path}: masked_max_length goes with a masked prompt (this task has none)")


def _mezo_boundary(prompt: str, candidates: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """MeZO's ``encode_prompt``: the scored text is ``(prompt + candidate).lstrip().strip(" ")``
    and the context is ``prompt`` stripped the same way, so the candidate is what lies between."""
    context = prompt.lstrip().rstrip(" ")
    return context, tuple((prompt + c).lstrip().rstrip(" ")[len(context) :] for c in candidates)
