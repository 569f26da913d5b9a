"""zobench/hub.py: the hub probe's offline variables, and the datasets offline switch scoped to
one call (the process-global ``datasets.config.HF_HUB_OFFLINE`` is never left changed)."""

import pytest

from zobench import hub


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_an_offline_variable_means_no_hub_without_a_probe(monkeypatch, variable):
    monkeypatch.setattr(hub, "_hub_answers", lambda *a: pytest.fail("probed the hub although offline was asked"))
    monkeypatch.setenv(variable, "1")
    assert not hub.hub_available()
    assert "offline mode is set" in hub.why_offline()


@pytest.mark.parametrize("offline", [True, False])
def test_the_datasets_offline_switch_holds_for_one_call_only(monkeypatch, offline):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with hub.datasets_offline(offline):
        assert datasets.config.HF_HUB_OFFLINE is offline
    assert datasets.config.HF_HUB_OFFLINE is False
    with pytest.raises(OSError), hub.datasets_offline(True):
        raise OSError("no cache entry")
    assert datasets.config.HF_HUB_OFFLINE is False  # put back after a failed load too


def test_an_offline_environment_stays_offline(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with hub.datasets_offline(False):
        assert datasets.config.HF_HUB_OFFLINE is True
    assert datasets.config.HF_HUB_OFFLINE is True
