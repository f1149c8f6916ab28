"""Evaluate while training: a trainer hook that scores the EMA generator every `train.evaluate_every` steps (FID
and friends for generators of latents; paired metrics on the validation split for image-to-image generators)."""

from __future__ import annotations

from typing import Any

from atlas_gan.metrics import main_scores
from atlas_gan.metrics.evaluate import evaluate_generator, image_evaluator, scored_checkpoints
from atlas_gan.metrics.translation import TranslationEvaluator, evaluation_record
from atlas_gan.metrics.unpaired import UnpairedEvaluator, unpaired_record
from atlas_gan.metrics.weights import resolve_weights
from atlas_gan.runtime.signature import IMAGE
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.trainer import Trainer


class EvaluationHook(TrainHooks):
    """FID/KID (IS with a classifier head) into log.jsonl and run_dir/eval/; other hooks see them via on_log.
    Rank 0 tells the trainer which evaluated checkpoint scored the lowest FID (`Trainer.best_step`), so pruning
    keeps it for the registry (`evaluate.register_checkpoint`)."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.results: list[dict[str, Any]] = []
        self.translation: TranslationEvaluator | UnpairedEvaluator | None = None  # rank 0, image-to-image
        self.best_fid: float | None = None  # rank 0: the lowest FID so far (its step: `Trainer.best_step`)

    def on_start(self, trainer: Trainer) -> None:
        if trainer.recipe.signature == IMAGE:
            if trainer.ctx.is_main:  # held-out tiles and baselines, loaded once (and bad settings fail now)
                self.translation = image_evaluator(trainer.config, trainer.generator_meta(), self.n, trainer.ctx.device)
            return
        resolve_weights(trainer.config.evaluate.inception_weights)  # no weights: fail now, not mid-run
        if trainer.ctx.is_main:  # a resumed run: the checkpoints scored before it
            for fid, step, _ in scored_checkpoints(trainer.config):
                self._note_score(trainer, fid, step)

    def _note_score(self, trainer: Trainer, fid: float | None, step: int) -> None:
        if fid is not None and (self.best_fid is None or fid <= self.best_fid):
            self.best_fid = fid
            trainer.best_step = step

    def on_evaluate(self, trainer: Trainer) -> None:
        if trainer.recipe.signature == IMAGE:
            self._evaluate_translation(trainer)
            return
        result = evaluate_generator(
            trainer.config, trainer.generator, trainer.generator_meta(), trainer.ctx, n=self.n, progress=False
        )
        if result is None:  # not rank 0
            return
        self.results.append(result)
        main = main_scores(result)
        self._note_score(trainer, result.get("fid"), trainer.step)
        record = {
            "event": "evaluate",
            "step": trainer.step,
            "images_seen": trainer.images_seen,
            "fid": main["fid"],
            "kid": main["kid"],
            "is": main["is"],
            "floor_fid": main["floor_fid"],
            "fid_above_floor": main["fid_above_floor"],
            "spread_ratio": main["spread_ratio"],
            "sample_precision": main["sample_precision"],
            "sample_recall": main["sample_recall"],
            "floor_precision": main["floor_precision"],
            "floor_recall": main["floor_recall"],
            "n_fake": result["n_fake"],
            "n_real": main["n_real"],
            "weights_sha256": result["weights_sha256"],
            "bands": main["bands"],
            "result": result["written_to"],
        }
        trainer.log_event(record)
        for hook in trainer.hooks:
            if hook is not self:
                hook.on_log(trainer, record)

    def _evaluate_translation(self, trainer: Trainer) -> None:
        """Rank 0 only: a translation is scored on the held-out pairs in memory, no collective needed."""
        if self.translation is None:
            return
        meta, device = trainer.generator_meta(), trainer.ctx.device
        if isinstance(self.translation, UnpairedEvaluator):
            result = self.translation.evaluate(trainer.generator, meta, device)
        else:
            references = trainer.reference_generators()
            result = self.translation.evaluate(trainer.generator, meta, device, references=references)
        self.results.append(result)
        if result["kind"] == "unpaired":
            record = unpaired_record(result, trainer.images_seen)
        else:
            record = evaluation_record(result, trainer.images_seen)
        trainer.log_event(record)
        for hook in trainer.hooks:
            if hook is not self:
                hook.on_log(trainer, record)
