"""Export: a run's fine-tuned model as a folder anyone loads without zobench.

Full tuning: ``save_pretrained`` of the whole model (transformers; load it with
``AutoModelForCausalLM.from_pretrained(out)``, or ``AutoModelForMaskedLM`` for an encoder). LoRA /
prefix: the peft adapter (``PeftModel.from_pretrained(base, out)`` on the base model the card
names). Both with the tokenizer and a model card ``README.md`` naming the task, method, tuning,
steps and the run's metrics. The weights are the replayed ones (``replay.py``) of the step asked
for: ``best`` (the best-dev step, the one the run tested), ``last`` or a step number.

The folder is written under a temporary name and renamed when complete, so a folder at ``out``
is always a whole export.

A run that was offloaded (``offload=cpu|disk``; or any full-tuning run with ``stream="on"``)
is replayed block by block (``stream.py``) and written as a sharded checkpoint one block at a
time (``offload/export.py``): the model is never whole in memory, and the folder loads with
``from_pretrained`` as the whole-model export does, to the same tensors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..build import Components
from ..checkpoint import copy_into, load_tensors
from ..errors import ConfigError
from ..offload.export import save_sharded
from .log import FILENAME
from .replay import Replayed, read_summary, replay
from .stream import replay_streamed, wants_stream


def export(run_dir: Path, out: Path, step: int | str = "best", device: str | None = None, stream: str = "auto") -> Path:
    """Write the model of ``run_dir`` at ``step`` to ``out`` (a new or empty folder); ``stream``:
    ``auto`` (block by block for a run that was offloaded), ``on`` or ``off``."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not an empty folder; choose a new output folder")
    summary = read_summary(run_dir, "cannot tell which step the run tested")
    if step == "best" and summary.get("best_step") is None:
        step = "last"  # no dev set: the run tested its last step
    has_log = (run_dir / FILENAME).is_file() or not (run_dir / "final" / "trainable.safetensors").is_file()
    streamed = has_log and wants_stream(run_dir, stream)
    tmp, work = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.work")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    try:
        if streamed:
            replayed = replay_streamed(run_dir, step, work, device=device)
        else:
            replayed = replay(run_dir, step, device=device) if has_log else from_final(run_dir, summary, step, device)
        tmp.mkdir(parents=True)
        if streamed:
            save_sharded(replayed.model, replayed.model.zobench_offloader, tmp)
            replayed.model.zobench_offloader.close()
        else:
            replayed.model.save_pretrained(tmp)  # a PeftModel saves its adapter only
        replayed.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(replayed, summary))
    except BaseException:  # a full disk: nothing half-written is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def from_final(run_dir: Path, summary: dict, step: int | str, device: str | None) -> Replayed:
    """A run without a trajectory (first-order baselines): its tested weights from ``final/``
    (``train.save_final=true``) on the base model; only the tested step is there."""
    from .replay import load_run_config, run_device

    tested = summary.get("tested_step")
    if step not in ("best", "last", str(tested), tested) or tested is None:
        raise ConfigError(
            f"--step {step}: {run_dir} has no trajectory.bin (a first-order run); only its tested step "
            f"{tested} is saved, in final/"
        )
    cfg = load_run_config(run_dir)
    base = Components.build(cfg, run_device(cfg, device, run_dir), data=False, learner=False)
    final = run_dir / "final" / "trainable.safetensors"
    copy_into(base.named, load_tensors(final), final)
    return Replayed(base.model, base.tokenizer, base.named, cfg, int(tested))


def model_card(replayed: Replayed, summary: dict) -> str:
    """A Hugging Face model card: what was trained, how, and what it scored."""
    cfg = replayed.cfg
    adapter = cfg.tuning.name != "full"
    metric = summary.get("metric", "accuracy")
    tested = summary.get("tested_step")
    rows = [
        ("task", cfg.task.name),
        ("base model", f"{cfg.model.name} ({cfg.model.get('source', '?')})"),
        ("method", cfg.optimizer.name),
        ("tuning", cfg.tuning.name),
        ("seed", cfg.seed),
        ("steps trained", summary.get("steps")),
        ("step exported", replayed.step),
        ("forward passes", summary.get("forward_passes")),
        (f"dev {metric} (best, step {summary.get('best_step')})", summary.get(f"dev_{metric}")),
        (f"test {metric} (step {tested})", summary.get(f"test_{metric}")),
        ("zobench", f"{summary.get('zobench_version')} ({summary.get('git_sha')})"),
    ]
    load = (
        "base = AutoModelForCausalLM.from_pretrained(<the base model above>)\n"
        "model = PeftModel.from_pretrained(base, '<this folder>')"
        if adapter
        else "model = AutoModelForCausalLM.from_pretrained('<this folder>')"
    )
    note = "" if tested is None or tested == replayed.step else f"\nThe run's test score is of step {tested}.\n"
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"---\nlibrary_name: {'peft' if adapter else 'transformers'}\ntags: [zobench, zeroth-order, "
        f"{cfg.optimizer.name}]\n---\n\n# {cfg.model.name} fine-tuned on {cfg.task.name} with "
        f"{cfg.optimizer.name} ({cfg.tuning.name})\n\nExported by `python -m zobench.export` from a zobench run "
        f"(zeroth-order fine-tuning: forward passes only), step {replayed.step}, weights rebuilt from the run's "
        f"trajectory.\n\n| | |\n|---|---|\n{table}\n{note}\n```python\n{load}\n```\n"
    )
