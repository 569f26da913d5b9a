"""Bad input: one line naming the key and what is allowed, exit code 2, no traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import SMOKE, compose_run, one_error_line, zobench, zobench_in_process
from zobench.errors import ConfigError
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
    (["optimizer.lr=0"], "optimizer.lr=0: expected a finite number > 0"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001: expected a finite number > 0"),
    (["optimizer.eps=0"], "optimizer.eps=0: expected a finite number > 0"),
    (["optimizer.eps=big"], "optimizer.eps='big': expected a finite number > 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1: expected a finite number >= 0"),
    (["train.batch_size=0"], "train.batch_size=0: expected an integer >= 1"),
    (["train.eval_every=0"], "train.eval_every=0: expected an integer >= 1"),
    (["data.num_eval=0"], "data.num_eval=0: expected an integer >= 1"),
    (["data.num_train=0"], "data.num_train=0: expected an integer >= 1"),
    (["data.protocol=lmbff"], "data.protocol='lmbff': allowed mezo, kshot"),
    (["data.k=0"], "data.k=0: expected an integer >= 1"),
    (["data.protocol=kshot", "data.num_eval=-1"], "data.num_eval=-1: expected an integer >= 0"),
    (["seed=-1"], "seed=-1: expected an integer in 0..4294967295"),
    (["model.dtype=float8"], "model.dtype='float8': allowed float32, float16, bfloat16"),
    (["engine.mode=lazy"], "engine.mode='lazy': allowed inplace, virtual"),
    (["device=tpu"], "device='tpu': allowed auto, cpu, cuda, cuda:N"),
    (["train.on_divergence=ignore"], "train.on_divergence='ignore': allowed stop, skip"),
    (["train.keep_best=maybe"], "train.keep_best='maybe': expected true or false"),
    (["engine.paired=sometimes"], "engine.paired='sometimes': expected true or false"),
    (["engine.fused_linear=yes"], "engine.fused_linear='yes': expected true or false"),
    (
        ["engine=torch", "engine.fused_linear=true"],
        "engine.fused_linear=true needs engine.backend=triton (or auto on CUDA) and engine.mode=virtual; "
        "got engine.backend=torch, engine.mode=virtual",
    ),
    (["data.dir=/nonexistent/mirror"], "data.dir: /nonexistent/mirror/sst2/train.jsonl not found"),
    (
        ["model=roberta-large", "task=copa"],
        "model=roberta-large is a masked LM; task=copa has prompts for causal LMs only",
    ),
    (
        ["model=tiny-roberta", "task=copa"],
        "model=tiny-roberta is a masked LM; task=copa has prompts for causal LMs only",
    ),
    (["objective=bleu"], "objective='bleu': allowed loss, accuracy, f1"),
    (["objective=f1"], "objective=f1: task metric is accuracy; allowed loss, accuracy"),
    (["icl.demos=-1"], "icl.demos=-1: expected an integer >= 0"),
    # the optimizers' own hyperparameter checks, named by their key
    (["optimizer=zo_sgd_sign", "optimizer.sign=vector"], "optimizer.sign='vector': allowed scalar, elementwise"),
    (["optimizer=tezo", "optimizer.variant=bogus"], "optimizer.variant='bogus': allowed plain, momentum, adam"),
    (["optimizer=zo_sgd_cons", "optimizer.base=adam"], "optimizer.base='adam': allowed sgd, adamw"),
    (["optimizer=hizoo", "optimizer.rule=2023"], "optimizer.rule=2023: allowed 2025, 2024"),
    (["optimizer=zo_adam", "optimizer.state_dtype=fp8"], "optimizer.state_dtype='fp8': allowed float32, bfloat16"),
    (["optimizer=subzero", "optimizer.adapter_shape=round"], "optimizer.adapter_shape='round': allowed square, tensor"),
    (["optimizer=zo_sgd_momentum", "optimizer.momentum=1"], "optimizer.momentum=1: must be in [0, 1)"),
    (["icl.demos=5000"], "icl.demos=5000 > data.num_train=32: demonstrations are drawn from the training examples"),
    # non-finite numbers are config errors, not a "divergence" later
    (["optimizer.lr=nan"], "optimizer.lr=nan: expected a finite number > 0"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: expected a finite number > 0"),
    (["optimizer.eps=-inf"], "optimizer.eps=-inf: expected a finite number > 0"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay=nan: expected a finite number >= 0"),
    # seeds numpy cannot take
    (["seed=4294967296"], "seed=4294967296: expected an integer in 0..4294967295"),
    (["data.seed=99999999999999"], "data.seed=99999999999999: expected an integer in 0..4294967295"),
    (["data.eval_seed=4294967296"], "data.eval_seed=4294967296: expected an integer in 0..4294967295"),
    (["data.eval_seed=-3"], "data.eval_seed=-3: expected an integer in 0..4294967295"),
    # data files
    (["data.on_bad_row=ignore"], "data.on_bad_row='ignore': allowed error, skip"),
    (
        ["data.num_dev=67349"],
        "data.num_dev=67349: task sst2's train pool has only 67349 rows, too few for 67349 dev "
        "rows plus at least one training row; set data.num_dev <= 67348",
    ),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["device=cuda"], "device=cuda: no CUDA device is available here"))


def _zobench(*args, env=None):
    """``python -m zobench`` in a fresh interpreter; ``env`` values of None remove that variable."""
    return zobench(*args, env=env)


@pytest.fixture
def cli(monkeypatch):
    """``python -m zobench`` through its entry point in this interpreter (the same checks, Hydra
    run and exit code; the interpreter's start-up is what a few tests below pay for)."""
    return lambda *args: zobench_in_process(*args, monkeypatch=monkeypatch)


def _assert_bad_input(result, message):
    one_error_line(result, message)


IN_A_FRESH_INTERPRETER = [  # one of each kind: Hydra's composition, the config check, a data file, an optimizer
    BAD_INPUTS[0],
    next(b for b in BAD_INPUTS if b[0] == ["train.steps=abc"]),
    next(b for b in BAD_INPUTS if b[0] == ["data.dir=/nonexistent/mirror"]),
    next(b for b in BAD_INPUTS if b[0][0] == "optimizer=zo_sgd_momentum"),
]


@pytest.mark.parametrize(
    "overrides, message",
    [  # the fast tier checks one of each kind (IN_A_FRESH_INTERPRETER); the full suite all
        pytest.param(o, m, id=" ".join(o), marks=() if (o, m) in IN_A_FRESH_INTERPRETER else pytest.mark.slow)
        for o, m in BAD_INPUTS
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, data_dir, overrides, message, cli):
    base = [*SMOKE, "train.steps=2", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = cli(*base, *overrides)
    _assert_bad_input(result, message)
    summary = tmp_path / "run" / "summary.json"
    assert not summary.exists() or '"status": "failed"' in summary.read_text()  # nothing that looks complete


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message", IN_A_FRESH_INTERPRETER, ids=[" ".join(o) for o, _ in IN_A_FRESH_INTERPRETER]
)
def test_bad_input_is_one_line_and_exit_2_from_a_fresh_interpreter(tmp_path, data_dir, overrides, message):
    base = [*SMOKE, "train.steps=2", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    _assert_bad_input(_zobench(*base, *overrides), message)


@pytest.mark.slow
def test_debug_true_shows_the_traceback(tmp_path, data_dir):
    result = _zobench(*SMOKE, "train.steps=abc", "debug=true", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def _interrupted_run(run_dir, data_dir, monkeypatch):
    """A run that receives SIGUSR1 in its first step: checkpointed at step 1, status interrupted."""
    from zobench.models import CandidateScorer

    original = CandidateScorer.loss
    calls = {"n": 0}

    def loss(self, batch, replicas=1):  # the replicas keyword keeps the batched ± pair on
        calls["n"] += 1
        if calls["n"] == 2:  # inside step 1 (call 1 is the memory probe)
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, replicas=replicas)

    monkeypatch.setattr(CandidateScorer, "loss", loss)
    summary = run(compose_run(*SMOKE, "train.steps=4", "train.checkpoint_every=0", f"data.dir={data_dir}"), run_dir)
    monkeypatch.setattr(CandidateScorer, "loss", original)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGUSR1" and summary["steps"] == 1
    return summary


@pytest.mark.slow
def test_resume_with_a_changed_config_is_refused(tmp_path, data_dir, monkeypatch, cli):
    _interrupted_run(tmp_path, data_dir, monkeypatch)
    result = cli(*SMOKE, "train.steps=4", "optimizer.lr=5e-5", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path}")
    _assert_bad_input(result, "holds a checkpoint of a different config (optimizer.lr: 3e-05 -> 5e-05)")
    # changing a resumable key (more steps) is fine
    result = cli(*SMOKE, "train.steps=5", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "damage, message",
    [
        pytest.param("optimizer.pt", "optimizer.pt is corrupted (its sha256 differs", marks=pytest.mark.slow),
        pytest.param("loop.json", "loop.json is corrupted (its sha256 differs", marks=pytest.mark.slow),
        pytest.param("manifest.json", "manifest.json is unreadable", marks=pytest.mark.slow),
        pytest.param("latest", "manifest.json is unreadable (FileNotFoundError", marks=pytest.mark.slow),
        pytest.param("summary.json", "summary.json is unreadable (JSONDecodeError", marks=pytest.mark.slow),
    ],
)
def test_unreadable_checkpoint_or_side_file_is_one_line(tmp_path, data_dir, monkeypatch, damage, message, cli):
    _interrupted_run(tmp_path, data_dir, monkeypatch)
    path = tmp_path / damage if damage in ("summary.json",) else tmp_path / "checkpoint" / damage
    if damage == "latest":
        path.write_text("ckpt-000000099")
    elif damage != "summary.json":
        path = next((tmp_path / "checkpoint").glob(f"ckpt-*/{damage}"))
    if damage != "latest":
        path.write_bytes(b"{not what was written")
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    result = cli(
        *SMOKE, "train.steps=4", "train.checkpoint_every=0", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path}"
    )
    _assert_bad_input(result, message)
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics


def _bad_mirror(tmp_path, data_dir, line: str) -> Path:
    mirror = tmp_path / "mirror"
    (mirror / "sst2").mkdir(parents=True)
    with open(data_dir / "sst2" / "train.jsonl") as f:
        rows = [next(f) for _ in range(60)]
    rows[41] = line + "\n"
    (mirror / "sst2" / "train.jsonl").write_text("".join(rows))
    (mirror / "sst2" / "validation.jsonl").write_text((data_dir / "sst2" / "validation.jsonl").read_text())
    return mirror


def test_a_bad_data_row_is_one_line_before_the_model_loads(tmp_path, data_dir, cli):
    mirror = _bad_mirror(tmp_path, data_dir, '{"sentence": "ok", "label": 1.7}')
    # an empty cache: loading the model (its tokenizer) would convert the GGUF into it first
    cache = tmp_path / "cache"
    result = cli(
        *SMOKE, "train.steps=2", f"data.dir={mirror}", f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    _assert_bad_input(result, f"{mirror}/sst2/train.jsonl:42: label=1.7: task sst2 labels are the integers 0..1")
    assert not (cache / "models").exists()  # the data error came before the model was loaded


def test_skipped_bad_rows_are_counted_in_the_summary(tmp_path, data_dir, caplog):
    mirror = _bad_mirror(tmp_path, data_dir, "not json at all")
    summary = run(compose_run(*SMOKE, "train.steps=1", f"data.dir={mirror}", "data.on_bad_row=skip"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["skipped_rows"] == 1
    assert "1 bad rows skipped (data.on_bad_row=skip), lines 42" in caplog.text


@pytest.mark.slow
def test_a_damaged_cached_tokenizer_is_one_line(tmp_path, data_dir, cli):
    cache = tmp_path / "cache"
    converted = Path("~/.cache/zobench/models/smollm2-135m").expanduser()
    (cache / "models" / "smollm2-135m").mkdir(parents=True)
    for path in converted.iterdir():  # links to the files (the weights are 0.5 GB), a broken copy of one
        (cache / "models" / "smollm2-135m" / path.name).symlink_to(path)
    (cache / "models" / "smollm2-135m" / "tokenizer.json").unlink()
    (cache / "models" / "smollm2-135m" / "tokenizer.json").write_text('{"broken')
    result = cli(
        *SMOKE, "train.steps=2", f"data.dir={data_dir}", f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    _assert_bad_input(
        result, f"cache_dir={cache}: loading the converted model in {cache}/models/smollm2-135m failed (JSONDecodeError"
    )


def test_an_unusable_cache_dir_is_one_line(tmp_path, data_dir, cli):
    """The cache must be written (first use of a model): a path that cannot be a folder. It is
    refused before the model is converted (a minute), not after."""
    (tmp_path / "file").write_text("not a folder")
    result = cli(
        *SMOKE,
        "train.steps=2",
        f"data.dir={data_dir}",
        f"cache_dir={tmp_path / 'file' / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    _assert_bad_input(result, f"cache_dir={tmp_path / 'file' / 'cache'}: cannot use")


def test_an_unwritable_run_dir_is_one_line(tmp_path, data_dir, monkeypatch, cli):
    """Before Hydra writes there (its callback) and in run() itself (a dir that turned
    unwritable, or run() called directly). Tests run as root, where permission bits do not
    stop a write: a path below a regular file stands in for a read-only dir."""
    (tmp_path / "file").write_text("not a folder")
    result = cli(*SMOKE, "train.steps=1", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    _assert_bad_input(
        result, f"hydra.run.dir={tmp_path / 'file' / 'run'}: cannot write there ({tmp_path / 'file'} is not a folder)"
    )
    with pytest.raises(ConfigError, match=r"hydra.run.dir=.*/file/run: cannot write there"):
        run(compose_run(*SMOKE, "train.steps=1", f"data.dir={data_dir}"), tmp_path / "file" / "run")
    from zobench.lock import unusable_run_dir

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a read-only dir answers a non-root user
    assert unusable_run_dir(tmp_path / "new" / "run") == f"{tmp_path} is not writable"


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_an_empty_or_impossible_run_dir_is_one_line(tmp_path, data_dir, monkeypatch, cli, multirun):
    """``hydra.run.dir=$UNSET`` would write a whole run into the current directory; ``/proc/...``
    passes root's permission check but no folder can be made there. Nothing is written."""
    monkeypatch.chdir(tmp_path)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    base = [*(["-m"] if multirun else []), *SMOKE, "train.steps=1", f"data.dir={data_dir}"]
    _assert_bad_input(cli(*base, f"{key}="), f"{key} is empty (an unset shell variable?)")
    _assert_bad_input(cli(*base, f"{key}=  "), f"{key} is empty")
    _assert_bad_input(
        cli(*base, f"{key}=/proc/zobench-run"),
        f"{key}=/proc/zobench-run: cannot write there (cannot make a folder in /proc",
    )
    assert list(tmp_path.iterdir()) == []
    assert not Path("/proc/zobench-run").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "RUN", "--out", "OUT"],
        ["export", "RUN", "OUT"],
        ["report", "RUN", "--table", "smoke", "--out", "OUT"],
    ],
    ids=["replay", "export", "report"],
)
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, argv):
    """Under a regular file, in /proc, or empty (an unset shell variable): one line naming the
    option, exit 2, before the run dir is even read (it does not exist here)."""
    import importlib

    (tmp_path / "file").write_text("not a folder")
    for out, message in (
        (
            tmp_path / "file" / "out",
            f"{tmp_path / 'file' / 'out'}: cannot write there ({tmp_path / 'file'} is not a folder)",
        ),
        ("/proc/zobench-out", "/proc/zobench-out: cannot write there (cannot make a folder in /proc"),
        ("", "is empty (an unset shell variable?)"),
    ):
        args = [str(out) if a == "OUT" else str(tmp_path / "run") if a == "RUN" else a for a in argv[1:]]
        with pytest.raises(SystemExit) as stop:
            importlib.import_module(
                f"zobench.{argv[0]}.__main__" if argv[0] == "report" else f"zobench.{argv[0]}"
            ).main(args)
        one_error_line(subprocess.CompletedProcess(args, stop.value.code, "", capsys.readouterr().err), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bench_out_and_a_device_this_machine_lacks_are_one_line(tmp_path):
    """bench.out is checked with the bench's config; replay and export check --device (or the
    run's own device) before loading a model: not torch's error blaming the model cache."""
    from tests.helpers import compose_config
    from zobench.config import validate_bench
    from zobench.trajectory.replay import run_device

    (tmp_path / "file").write_text("")
    cfg = compose_config("bench", "model=tiny-llama", f"bench.out={tmp_path / 'file' / 'b'}")
    with pytest.raises(ConfigError, match=r"bench.out=.*/file/b: cannot write there \(.*/file is not a folder\)"):
        validate_bench(cfg)
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ConfigError, match=rf"^--device {missing}: (no CUDA device is available here|this machine has)"):
        run_device(compose_run(), missing, tmp_path)
    with pytest.raises(ConfigError, match=rf"config.yaml: device={missing}: .*(pass --device cpu|this machine has)"):
        run_device(compose_run(f"device={missing}"), None, tmp_path)
    with pytest.raises(ConfigError, match=r"--device 'gpu': allowed auto, cpu, cuda, cuda:N"):
        run_device(compose_run(), "gpu", tmp_path)


class _FullDisk:
    """A file whose writes fail as on a full disk (``OSError(ENOSPC)`` without a file name, as a
    real ``write`` on an open file raises) once ``budget`` writes have passed."""

    def __init__(self, file, budget: int) -> None:
        self._file, self._budget = file, budget

    def write(self, data):
        self._budget -= 1
        if self._budget < 0:
            import errno

            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.mark.slow  # two tiny runs each (the fast tier: test_writer_failures_become_an_oserror_naming_the_file)
@pytest.mark.parametrize("where", ["trajectory", "checkpoint"])
def test_a_full_disk_is_one_line_and_the_run_resumes_after(tmp_path, data_dir, monkeypatch, cli, where):
    """Disk full while the trajectory log is appended (step 5) or while a checkpoint is written
    (step 4): one line naming the file and saying how to resume, exit 2; started again with
    room, the run resumes and completes with every step logged once."""
    import errno

    import zobench.checkpoint
    from zobench.trajectory.log import TrajectoryWriter

    run_dir = tmp_path / "run"
    args = [*SMOKE, "train.steps=8", "train.checkpoint_every=2", "train.log_every=1", f"data.dir={data_dir}"]
    args.append(f"hydra.run.dir={run_dir}")
    if where == "trajectory":
        opened = TrajectoryWriter.__init__

        def full_after_four(self, path, offset):
            opened(self, path, offset)
            self._file = _FullDisk(self._file, budget=4)

        monkeypatch.setattr(TrajectoryWriter, "__init__", full_after_four)
        target = run_dir / "trajectory.bin"
    else:
        real_save, calls = zobench.checkpoint.torch.save, []

        def save(obj, path, *a, **k):  # torch.save's own report of a full disk
            calls.append(path)
            if len(calls) == 2:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            return real_save(obj, path, *a, **k)

        monkeypatch.setattr(zobench.checkpoint.torch, "save", save)
        monkeypatch.setattr(zobench.checkpoint, "_disk_full", lambda path: True)
        target = run_dir / "checkpoint" / ".ckpt-000000004.tmp" / "optimizer.pt"
    result = cli(*args)
    line = one_error_line(result, f"{target}: {os.strerror(errno.ENOSPC)}; free space")
    assert f"the run resumes from its last checkpoint in {run_dir}" in line
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # (undo restored the cwd and the environment; the fixtures' env is back below)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == list(range(1, 9))


def test_writer_failures_become_an_oserror_naming_the_file(tmp_path, monkeypatch):
    """safetensors and torch.save report a full disk in their own words; other errors pass."""
    import errno

    from zobench.checkpoint import write_error_line, writing

    class SafetensorError(Exception):
        pass

    with pytest.raises(OSError) as info, writing(tmp_path / "a.safetensors"):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "a.safetensors"))
    with pytest.raises(OSError) as info, writing(tmp_path / "o.pt"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert info.value.errno == errno.EIO  # the disk has room: not called full
    with pytest.raises(ValueError), writing(tmp_path / "x"):
        raise ValueError("not an I/O error")
    assert write_error_line(FileNotFoundError(errno.ENOENT, "No such file", "x"), tmp_path) is None


@pytest.mark.slow
def test_a_second_process_in_the_same_run_dir_is_refused(tmp_path, data_dir):
    """Two real processes: the second is refused with one line and touches nothing; once the
    first is SIGKILLed its lock is gone (the kernel drops it) and the next start resumes."""
    run_dir = tmp_path / "run"
    args = [
        *SMOKE,
        "train.steps=40",
        "train.log_every=1",
        "train.checkpoint_every=1",
        f"data.dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "zobench", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run_dir / "checkpoint" / "latest").is_file():
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        # Stopped, the first still holds its lock but cannot finish while the second starts up
        # (a tiny run ends in seconds, about the time a second interpreter needs to import torch).
        first.send_signal(signal.SIGSTOP)
        result = _zobench(*args)
        _assert_bad_input(result, f"hydra.run.dir={run_dir}: another zobench process (pid {first.pid} on ")
        assert first.poll() is None, "the first run must still be running: the check is meaningless otherwise"
        assert not (run_dir / "summary.json").exists()  # the second wrote no failed summary
    finally:
        first.kill()
        first.wait()
    events = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    steps = [e["step"] for e in events if e["event"] == "train"]
    assert steps == sorted(set(steps))  # not interleaved, not duplicated
    result = _zobench(*args)  # stale-lock safe: the killed holder's lock is gone
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == list(range(1, 41))


@pytest.mark.slow
def test_credentials_never_reach_a_file_in_the_run_dir(tmp_path, data_dir):
    """Passed as overrides, known by name or by shape, or held in the environment: no file under
    the run dir (config.yaml, .hydra/*, metrics, W&B's run files and argv) holds them; and
    tokenizer_from is not taken for a credential."""
    secrets = {"api": "s3cret-api-value-1", "hf": "hf_" + "Zq9" * 12, "env": "s3cret-env-wandb-key-3"}
    args = [a for a in SMOKE if a != "logger=none"]
    result = _zobench(
        *args,
        "logger=wandb",
        "logger.mode=offline",
        "train.steps=1",
        f"data.dir={data_dir}",
        f"+logger.api_key={secrets['api']}",
        f"logger.group={secrets['hf']}",
        f"hydra.run.dir={tmp_path}",
        env={"WANDB_API_KEY": secrets["env"], "WANDB_MODE": None},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = [
        str(p) for p in tmp_path.rglob("*") if p.is_file() for s in secrets.values() if s.encode() in p.read_bytes()
    ]
    assert found == [], found
    records = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # W&B's run record holds the argv
    assert records and b"+logger.api_key=<redacted>" in records[0].read_bytes()
    assert "+logger.api_key=<redacted>" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert "tokenizer_from: smollm2-135m" in (tmp_path / "config.yaml").read_text()
    assert "tokenizer_from: smollm2-135m" in (tmp_path / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize("bad", ["train.steps", "+model.init_seed", "-m train.steps"])
def test_an_override_without_a_value_is_one_line(tmp_path, cli, bad):
    """Not Hydra's four lines of grammar (exit 1): one line saying key=value is expected, exit 2;
    the values of Hydra's own options (``-cn``, ``--config-dir``) are not overrides."""
    result = cli(*bad.split(), f"hydra.run.dir={tmp_path}")
    key = bad.split()[-1]
    one_error_line(result, f"{key!r}: expected an override key=value")
    assert list(tmp_path.iterdir()) == []
    from zobench.__main__ import _check_syntax

    _check_syntax(["-cn", "config", "--config-dir", "conf", "~logger.tags", "seed=1", "-m"])  # no exit
    one_error_line(
        cli("mezo", f"hydra.run.dir={tmp_path}"), "'mezo': expected an override key=value (e.g. optimizer=mezo)"
    )


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_hydras_files_and_output_never_hold_a_credential(tmp_path, data_dir, cli, monkeypatch, multirun):
    """A run or sweep stopped as it starts (here refused by the config check, before the run
    rewrites anything, as a kill would leave it): multirun.yaml, .hydra/*.yaml and what was
    printed hold no credential, given by name (+logger.api_key) or by shape (an hf_ token)."""
    secrets = ["s3cret-sweep-key-42", "hf_" + "Xy7" * 12]
    for name in ("ZOBENCH_SECRET_LOGGER_API_KEY", "ZOBENCH_SECRET_LOGGER_GROUP"):
        monkeypatch.delenv(name, raising=False)  # main() sets them; restored after
    where = f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"
    result = cli(
        *(["-m", "seed=0,1"] if multirun else []),
        *[a for a in SMOKE if a != "logger=none"],
        "logger=wandb",
        f"data.dir={data_dir}",
        "train.steps=-1",
        f"+logger.api_key={secrets[0]}",
        f"logger.group={secrets[1]}",
        where,
    )
    one_error_line(result, "train.steps=-1: expected an integer >= 0")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    expected = {"overrides.yaml", "hydra.yaml", "config.yaml"} | ({"multirun.yaml"} if multirun else set())
    assert expected <= {p.name for p in written}
    assert [str(p) for p in written for s in secrets if s.encode() in p.read_bytes()] == []
    assert not any(s in result.stdout + result.stderr for s in secrets)


@pytest.mark.slow
def test_two_quick_sigints_still_end_in_a_clean_interrupted_exit(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zobench",
            *SMOKE,
            "train.steps=40",
            "train.log_every=1",
            "train.checkpoint_every=0",
            f"data.dir={data_dir}",
            f"hydra.run.dir={run_dir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "metrics.jsonl").is_file():
        time.sleep(0.02)
    while time.time() < deadline and '"step": 2,' not in (run_dir / "metrics.jsonl").read_text():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] >= 2


@pytest.mark.slow
def test_unreachable_wandb_falls_back_to_offline_and_keeps_metrics(tmp_path, data_dir):
    """A key set and a dead server (what a cluster without internet sees): the online init times
    out (3 s here), the run goes on offline under the same W&B run id, and completes."""
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": None}
    args = [a for a in SMOKE if a != "logger=none"]
    started = time.time()
    result = _zobench(
        *args,
        "logger=wandb",
        "logger.mode=online",
        "logger.init_timeout=3",
        "train.steps=2",
        f"data.dir={data_dir}",
        f"hydra.run.dir={tmp_path}",
        env=env,
    )
    assert time.time() - started < 120  # bounded by the init timeout, not a hang
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is in use" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert list(tmp_path.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    output = result.stdout + result.stderr  # Hydra's console log handler writes to stdout
    assert "W&B unreachable" in output and "logging offline instead" in output
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert '"status": "completed"' in (tmp_path / "summary.json").read_text()
