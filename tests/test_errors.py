"""Bad input: one line naming the key and what is allowed, exit code 2, no traceback."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.test_config import compose_run
from tests.test_run import SMOKE
from zobench.run import run

BAD_INPUTS = [
    # (overrides, what the one line must say)
    (["optimizer=foo"], "optimizer=foo: no such option; allowed: adam, "),
    (["model=gpt5"], "model=gpt5: no such option; allowed: gemma3-270m, llama-7b, llama3-8b, opt-1.3b"),
    (["task=sst3"], "task=sst3: no such option; allowed: boolq, cb, copa, drop, mnli, multirc, record, rte, snli,"),
    (["engine=magic"], "engine=magic: no such option; allowed: auto, torch"),
    (["logger=tensorboard"], "logger=tensorboard: no such option; allowed: none, wandb"),
    (["tuning=dora"], "tuning=dora: no such option; allowed: full, lora, prefix"),
    (["train.stepz=5"], "train.stepz"),
    (["train.steps=abc"], "train.steps='abc': expected an integer >= 0"),
    (["train.steps=-5"], "train.steps=-5: expected an integer >= 0"),
    (["train.steps=2.5"], "train.steps=2.5: expected an integer >= 0"),
    (["optimizer.lr=0"], "optimizer.lr=0: expected a number > 0"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001: expected a number > 0"),
    (["optimizer.eps=0"], "optimizer.eps=0: expected a number > 0"),
    (["optimizer.eps=big"], "optimizer.eps='big': expected a number > 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1: expected a number >= 0"),
    (["train.batch_size=0"], "train.batch_size=0: expected an integer >= 1"),
    (["train.eval_every=0"], "train.eval_every=0: expected an integer >= 1"),
    (["data.num_eval=0"], "data.num_eval=0: expected an integer >= 1"),
    (["data.num_train=0"], "data.num_train=0: expected an integer >= 1"),
    (["data.protocol=lmbff"], "data.protocol='lmbff': allowed mezo, kshot"),
    (["data.k=0"], "data.k=0: expected an integer >= 1"),
    (["data.protocol=kshot", "data.num_eval=-1"], "data.num_eval=-1: expected an integer >= 0"),
    (["seed=-1"], "seed=-1: expected an integer >= 0"),
    (["model.dtype=float8"], "model.dtype='float8': allowed float32, float16, bfloat16"),
    (["engine.mode=lazy"], "engine.mode='lazy': allowed inplace, virtual"),
    (["device=tpu"], "device='tpu': allowed auto, cpu, cuda, cuda:N"),
    (["train.on_divergence=ignore"], "train.on_divergence='ignore': allowed stop, skip"),
    (["train.keep_best=maybe"], "train.keep_best='maybe': expected true or false"),
    (["engine.paired=sometimes"], "engine.paired='sometimes': expected true or false"),
    (["engine.fused_linear=yes"], "engine.fused_linear='yes': expected true or false"),
    (["engine=torch", "engine.fused_linear=true"],
     "engine.fused_linear=true needs engine.backend=triton (or auto on CUDA) and engine.mode=virtual; "
     "got engine.backend=torch, engine.mode=virtual"),
    (["data.dir=/nonexistent/mirror"], "data.dir: /nonexistent/mirror/sst2/train.jsonl not found"),
    (["model=roberta-large", "task=copa"], "model=roberta-large is a masked LM; task=copa has prompts for causal LMs only"),
    (["model=tiny-roberta", "task=copa"], "model=tiny-roberta is a masked LM; task=copa has prompts for causal LMs only"),
    (["objective=bleu"], "objective='bleu': allowed loss, accuracy, f1"),
    (["objective=f1"], "objective=f1: task metric is accuracy; allowed loss, accuracy"),
    (["icl.demos=-1"], "icl.demos=-1: expected an integer >= 0"),
    # the optimizers' own hyperparameter checks, named by their key
    (["optimizer=zo_sgd_sign", "optimizer.sign=vector"], "optimizer.sign='vector': allowed scalar, elementwise"),
    (["optimizer=tezo", "optimizer.variant=bogus"], "optimizer.variant='bogus': allowed plain, momentum, adam"),
    (["optimizer=zo_sgd_momentum", "optimizer.momentum=1"], "optimizer.momentum=1: must be in [0, 1)"),
    (["icl.demos=5000"], "icl.demos=5000 > data.num_train=32: demonstrations are drawn from the training examples"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["device=cuda"], "device=cuda: no CUDA device is available here"))


def _zobench(*args, env=None):
    return subprocess.run([sys.executable, "-m", "zobench", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _assert_bad_input(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith("zobench: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, data_dir, overrides, message):
    base = [*SMOKE, "train.steps=2", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = _zobench(*base, *overrides)
    _assert_bad_input(result, message)
    summary = tmp_path / "run" / "summary.json"
    assert not summary.exists() or '"status": "failed"' in summary.read_text()  # nothing that looks complete


def test_debug_true_shows_the_traceback(tmp_path, data_dir):
    result = _zobench(*SMOKE, "train.steps=abc", "debug=true", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def _interrupted_run(run_dir, data_dir, monkeypatch):
    """A run that receives SIGUSR1 in its first step: checkpointed at step 1, status interrupted."""
    from zobench.models import CandidateScorer

    original = CandidateScorer.loss
    calls = {"n": 0}

    def loss(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:  # inside step 1 (call 1 is the memory probe)
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch)

    monkeypatch.setattr(CandidateScorer, "loss", loss)
    summary = run(compose_run(*SMOKE, "train.steps=4", "train.checkpoint_every=0", f"data.dir={data_dir}"), run_dir)
    monkeypatch.setattr(CandidateScorer, "loss", original)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGUSR1" and summary["steps"] == 1
    return summary


def test_resume_with_a_changed_config_is_refused(tmp_path, data_dir, monkeypatch):
    _interrupted_run(tmp_path, data_dir, monkeypatch)
    result = _zobench(*SMOKE, "train.steps=4", "optimizer.lr=5e-5", f"data.dir={data_dir}",
                      f"hydra.run.dir={tmp_path}")
    _assert_bad_input(result, "holds a checkpoint of a different config (optimizer.lr: 3e-05 -> 5e-05)")
    # changing a resumable key (more steps) is fine
    result = _zobench(*SMOKE, "train.steps=5", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]


def test_unreadable_checkpoint_is_one_line(tmp_path, data_dir, monkeypatch):
    _interrupted_run(tmp_path, data_dir, monkeypatch)
    next((tmp_path / "checkpoint").glob("ckpt-*/optimizer.pt")).write_bytes(b"not a pickle")
    result = _zobench(*SMOKE, "train.steps=4", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path}")
    _assert_bad_input(result, "optimizer.pt is unreadable")


def test_unreachable_wandb_falls_back_to_offline_and_keeps_metrics(tmp_path, data_dir):
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": ""}
    args = [a for a in SMOKE if a != "logger=none"]
    result = _zobench(*args, "logger=wandb", "logger.mode=online", "logger.init_timeout=3", "train.steps=2",
                      f"data.dir={data_dir}", f"hydra.run.dir={tmp_path}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr  # Hydra's console log handler writes to stdout
    assert "W&B unreachable" in output and "logging offline instead" in output
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert '"status": "completed"' in (tmp_path / "summary.json").read_text()
