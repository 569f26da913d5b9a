"""cli/selfcheck.py (``python -m zobench.engine.selfcheck``); the check itself is
tests/engine/test_selfcheck.py's."""

import pytest

from zobench.cli import selfcheck


def test_a_misspelt_model_is_one_line_before_any_check(capsys):
    with pytest.raises(SystemExit) as exit_:
        selfcheck.main(["--models", "tiny-llama,nosuch", "device=cpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zobench: error: model=nosuch: no such option; allowed: ") and err.count("\n") == 1
