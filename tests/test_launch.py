"""The environment training processes start with (`atlas_gan.train.launch`)."""

from __future__ import annotations

import os
import sys

import pytest

from atlas_gan.train.launch import apply_threading_defaults, run_streaming

PRINT_SPINCOUNT = [sys.executable, "-c", "import os; print(os.environ.get('GOMP_SPINCOUNT'))"]


@pytest.fixture
def no_spincount(monkeypatch: pytest.MonkeyPatch) -> None:
    """GOMP_SPINCOUNT unset for the test, and afterwards as it was (setenv first, so the teardown restores it even
    when it was unset and a test sets it)."""
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    monkeypatch.delenv("GOMP_SPINCOUNT")


def spincount_seen_by_a_launched_process() -> str:
    lines: list[str] = []
    result = run_streaming(PRINT_SPINCOUNT, lines.append)
    assert result.returncode == 0
    return lines[-1]


@pytest.mark.usefixtures("no_spincount")
def test_launched_training_gets_a_short_openmp_spin() -> None:
    assert spincount_seen_by_a_launched_process() == "1000"
    assert "GOMP_SPINCOUNT" not in os.environ  # the caller's own environment is left alone


def test_the_users_spincount_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    assert spincount_seen_by_a_launched_process() == "300000"
    apply_threading_defaults()
    assert os.environ["GOMP_SPINCOUNT"] == "300000"


@pytest.mark.usefixtures("no_spincount")
def test_in_process_training_sets_the_default_when_unset() -> None:
    apply_threading_defaults()
    assert os.environ["GOMP_SPINCOUNT"] == "1000"
