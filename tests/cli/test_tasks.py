"""``python -m zobench.tasks list`` / ``show``."""

import subprocess
import sys

import pytest

from zobench.tasks import available_tasks
from zobench.tasks.__main__ import main


def test_list_shows_every_task_with_its_metadata_and_mirror_splits(capsys, data_dir):
    assert main(["--data-dir", str(data_dir), "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert sorted(lines) == available_tasks()
    assert lines["sst2"].split()[1:5] == ["1", "causal,masked", "classification", "accuracy"]
    assert "train=train eval=validation 16-shot:5/5 seeds" in lines["sst2"]
    assert lines["cb"].split()[5] == "max_length=512,num_dev=100"  # the generated task.* settings
    assert lines["sst2"].split()[5] == "max_length=256,masked_max_length=128"
    assert lines["squad"].split()[2:5] == ["causal", "generation", "f1"]
    assert "train=MISSING eval=validation" in lines["squad"]
    assert "train=MISSING eval=MISSING" in lines["drop"]


def test_show_renders_one_example_of_the_chosen_family(capsys, data_dir):
    assert main(["--data-dir", str(data_dir), "show", "rte", "--family", "masked", "--index", "0"]) == 0
    out = capsys.readouterr().out
    assert "according to the Christopher Reeve Foundation? <mask>, christopher Reeve had an accident." in out
    assert "  0: 'Yes'\n* 1: 'No'" in out


def test_show_generation_task_prints_answers_and_decoding(capsys, data_dir):
    assert main(["--data-dir", str(data_dir), "show", "squad"]) == 0
    out = capsys.readouterr().out
    assert "* 0: ' Denver Broncos\\n'" in out and "generation: {'max_new_tokens': 50" in out


def test_show_errors_are_one_line_exit_2(capsys, data_dir):
    assert main(["--data-dir", str(data_dir), "show", "record"]) == 2
    assert main(["--data-dir", str(data_dir), "show", "cb", "--index", "999"]) == 2
    assert main(["--data-dir", str(data_dir), "show", "nosuch"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith("zobench: error: data.dir: ") and "record/validation.jsonl not found" in errors[0]
    assert errors[1] == "zobench: error: --index 999: the eval split of cb has 56 rows"
    assert errors[2].startswith("zobench: error: task='nosuch': no such task; available: boolq, cb")


@pytest.mark.slow  # a CLI subprocess
def test_module_entry_point_runs(data_dir):
    result = subprocess.run(
        [sys.executable, "-m", "zobench.tasks", "--data-dir", str(data_dir), "show", "copa"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "The man turned on the faucet so" in result.stdout
