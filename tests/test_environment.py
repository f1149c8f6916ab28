"""environment_restored: what a library writes into os.environ does not outlive the block."""

from __future__ import annotations

import os

import pytest

from atlas_gan.runtime.environment import environment_restored


def test_added_changed_and_removed_variables_are_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_TEST_KEPT", "before")
    monkeypatch.setenv("ATLAS_TEST_REMOVED", "present")
    monkeypatch.delenv("ATLAS_TEST_ADDED", raising=False)
    before = dict(os.environ)
    with environment_restored():
        os.environ.update({"ATLAS_TEST_ADDED": "1", "ATLAS_TEST_KEPT": "changed"})
        del os.environ["ATLAS_TEST_REMOVED"]
    assert dict(os.environ) == before


def test_the_environment_is_restored_when_the_body_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATLAS_TEST_ADDED", raising=False)
    with pytest.raises(RuntimeError), environment_restored():
        os.environ["ATLAS_TEST_ADDED"] = "1"
        raise RuntimeError("body failed")
    assert "ATLAS_TEST_ADDED" not in os.environ
