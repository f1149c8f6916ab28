"""Champion or challenger: the promotion rule, free of MLflow so it can be read and tested on its own.

A new version becomes `champion` only when its FID is strictly lower than the champion's, both measured under the
same metric protocol (Inception weights, N real/fake, resize, band triplet, dataset checksum, seed) on the same
dataset family (dataset location, bands, tile size, normalization). Ties, missing or non-finite FIDs and
incomparable measurements never demote a champion: the new version becomes `challenger`.

A version must also pass the quality gate to be crowned, even when there is no champion yet (a registry may have
no champion rather than a bad one): its samples must vary (pixel spread at least `min_spread_ratio` of the real
tiles': a collapsed generator draws one tile), cover enough of the real tiles when asked (sample recall at least
`min_recall`) and its FID must stay under the configured ceilings (absolute, and relative to the real-vs-real floor
at the same N). A refused version is registered as `challenger` with the reason.

Image-to-image generators are scored on their held-out split instead (`TranslationScore`): pix2pix by PSNR (higher
is better), CycleGAN by FID against the other domain (lower is better), compared under the same split and bands or
domains only, and crowned only when they beat their baseline (the per-band linear regression; not translating at
all): a translation that does not is not worth a GAN.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from atlas_gan.metrics import main_scores

CHAMPION = "champion"
CHALLENGER = "challenger"


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def protocol_key(result: dict[str, Any], eval_seed: int) -> str:
    """What must be equal for two FIDs to be compared (from an evaluation result)."""
    main = main_scores(result)
    return _digest(
        {
            "weights": result["weights_sha256"],
            "n_fake": result["n_fake"],
            "n_real": main["n_real"],
            "resize": result["resize"],
            "bands": main["bands"],
            "dataset": result["dataset_checksum"],
            "seed": eval_seed,
        }
    )


def family_key(dataset_url: str, manifest: dict[str, Any]) -> str:
    """A dataset's identity across incremental growth: where it lives and how its tiles are made."""
    normalization = [(b["offset"], b["scale"]) for b in (manifest.get("normalization") or {}).get("bands", [])]
    return _digest(
        {
            "url": dataset_url.rstrip("/"),
            "bands": manifest["tile"]["bands"],
            "size": manifest["tile"]["size"],
            "normalization": normalization,
        }
    )


@dataclass(frozen=True)
class Score:
    fid: float | None
    protocol: str | None
    family: str | None
    floor_fid: float | None = None  # the real-vs-real floor at the same N
    spread_ratio: float | None = None  # the samples' pixel spread / the real tiles'
    recall: float | None = None  # share of the real tiles the samples cover (Inception features)
    floor_recall: float | None = None  # what real tiles outside the reference set score

    @property
    def usable(self) -> bool:
        return self.fid is not None and math.isfinite(self.fid)


@dataclass(frozen=True)
class Decision:
    alias: str  # CHAMPION or CHALLENGER
    reason: str


@dataclass(frozen=True)
class QualityGate:
    """What a version must reach to be crowned at all (None: that check is off)."""

    min_spread_ratio: float | None = None
    min_recall: float | None = None
    max_fid: float | None = None
    max_fid_over_floor: float | None = None


def gate_refusal(new: Score, gate: QualityGate) -> str | None:
    """Why `new` may not become champion whatever the champion's score, or None when it passes the gate."""
    if gate.min_spread_ratio is not None:
        if new.spread_ratio is None:
            return "no pixel-spread measurement (evaluated before atlas-gan measured it): score it again"
        if new.spread_ratio < gate.min_spread_ratio:
            return (
                f"samples collapsed: their pixel spread is {new.spread_ratio:.2f} of the real tiles' "
                f"(at least {gate.min_spread_ratio} required)"
            )
    if gate.min_recall is not None:
        if new.recall is None:
            return "no sample recall measurement (evaluated before atlas-gan measured it, or N too small)"
        if new.recall < gate.min_recall:
            real = "" if new.floor_recall is None else f"; real tiles outside the reference: {new.floor_recall:.2f}"
            return (
                f"samples cover too little of the real tiles: recall {new.recall:.2f} (at least {gate.min_recall} "
                f"required{real})"
            )
    if gate.max_fid is not None and new.fid > gate.max_fid:
        return f"FID {new.fid:.2f} is above the ceiling {gate.max_fid}"
    if gate.max_fid_over_floor is not None and new.floor_fid and new.fid > gate.max_fid_over_floor * new.floor_fid:
        return (
            f"FID {new.fid:.2f} is {new.fid / new.floor_fid:.1f}x the real-vs-real floor {new.floor_fid:.2f} "
            f"(at most {gate.max_fid_over_floor}x allowed)"
        )
    return None


def decide(new: Score, champion: Score | None, gate: QualityGate | None = None) -> Decision:
    if not new.usable:
        return Decision(CHALLENGER, f"no usable FID for the new version ({new.fid}); the champion stays")
    refusal = gate_refusal(new, gate) if gate is not None else None
    if refusal is not None:
        return Decision(CHALLENGER, f"not crowned: {refusal}")
    if champion is None:
        return Decision(CHAMPION, f"first version with an FID ({new.fid:.4f}): no champion yet")
    if champion.family != new.family:
        return Decision(
            CHALLENGER,
            "trained on another dataset family (location, bands, tile size or normalization) than the champion: "
            "FIDs are not comparable; promote by hand or use another tracking.registered_model",
        )
    if champion.protocol != new.protocol:
        return Decision(CHALLENGER, "the champion's FID was measured under another protocol: not comparable")
    if not champion.usable:
        return Decision(CHALLENGER, f"the champion has no usable FID ({champion.fid}); it stays champion")
    if new.fid < champion.fid:
        return Decision(CHAMPION, f"FID {new.fid:.4f} beats the champion's {champion.fid:.4f}")
    if new.fid == champion.fid:
        return Decision(CHALLENGER, f"FID {new.fid:.4f} ties the champion's: a tie never demotes it")
    return Decision(CHALLENGER, f"FID {new.fid:.4f} does not beat the champion's {champion.fid:.4f}")


def translation_protocol_key(result: dict[str, Any]) -> str:
    """What must be equal for two translations' scores to be compared (from a translation result): dataset, split,
    bands or domains, held-out counts (and for FID the Inception weights, resize and band triplet)."""
    split = result["split"]
    fields = {
        "kind": result["kind"],
        "dataset": result["dataset_checksum"],
        "split": {key: split.get(key) for key in ("by", "fraction", "seed", "block_tiles", "tiles")},
    }
    if result["kind"] == "unpaired":
        keys = ("domain_a", "domain_b", "n_a", "n_b", "weights_sha256", "resize", "bands")
    else:
        keys = ("input_bands", "target_bands", "n_validation")
    if result.get("scale"):  # super-resolution: the same degradation of the same tiles
        keys = (*keys, "scale", "degradation")
    return _digest({**fields, **{key: result[key] for key in keys}})


HIGHER_IS_BETTER = {"psnr": True, "fid": False}
BASELINES = {"psnr": "the per-band linear regression", "fid": "not translating at all"}


@dataclass(frozen=True)
class TranslationScore:
    """A translation's primary metric on its held-out split: PSNR (dB, higher is better) for paired data, FID
    (lower is better) for unpaired domains; `baseline`: the same metric of what it must beat."""

    metric: str  # psnr or fid
    value: float | None
    protocol: str | None
    family: str | None
    baseline: float | None = None
    baseline_name: str | None = None  # what the baseline is, when not the metric's usual one (BASELINES)

    @property
    def usable(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def beaten(self) -> str:
        return self.baseline_name or BASELINES[self.metric]

    def better_than(self, other: float) -> bool:
        assert self.value is not None
        return self.value > other if HIGHER_IS_BETTER[self.metric] else self.value < other


def decide_translation(new: TranslationScore, champion: TranslationScore | None) -> Decision:
    name = new.metric.upper()
    if not new.usable:
        return Decision(CHALLENGER, f"no usable {name} for the new version ({new.value}); the champion stays")
    if new.baseline is None or not new.better_than(new.baseline):
        return Decision(
            CHALLENGER,
            f"not crowned: {name} {new.value:.3f} does not beat {new.beaten} ({new.baseline})",
        )
    if champion is None:
        return Decision(
            CHAMPION,
            f"first translation scored ({name} {new.value:.3f}; {new.beaten}: {new.baseline:.3f}): no champion yet",
        )
    if champion.family != new.family:
        return Decision(CHALLENGER, "trained on another dataset family than the champion: not comparable")
    if champion.metric != new.metric or champion.protocol != new.protocol or not champion.usable:
        return Decision(
            CHALLENGER,
            f"the champion was not scored by {name} on the same split and bands or domains (another kind of "
            "generator, or another split): not comparable; promote by hand or use another tracking.registered_model",
        )
    assert champion.value is not None
    if new.better_than(champion.value):
        return Decision(CHAMPION, f"{name} {new.value:.3f} beats the champion's {champion.value:.3f}")
    return Decision(CHALLENGER, f"{name} {new.value:.3f} does not beat the champion's {champion.value:.3f}")
