"""Extension points of the training loop: where metrics and MLflow plug in. The loop imports neither."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atlas_gan.train.trainer import Trainer


class TrainHooks:
    """Called on rank 0 unless noted; the defaults do nothing."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step_start(self, trainer: Trainer) -> None:
        """Every rank, before each step."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_samples(self, trainer: Trainer, urls: list[str]) -> None: ...

    def on_figures(self, trainer: Trainer, urls: list[str]) -> None:
        """The run's figures (curves, real vs generated, band histograms) were (re)drawn at these URLs."""

    def on_checkpoint(self, trainer: Trainer, url: str) -> None: ...

    def on_evaluate(self, trainer: Trainer) -> None:
        """Every rank, every `evaluate_every` steps (evaluation may itself be distributed)."""

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None: ...
