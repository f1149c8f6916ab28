"""Champion or challenger: the promotion rule, free of MLflow so it can be read and tested on its own.

A new version becomes `champion` only when its FID is strictly lower than the champion's, both measured under the
same metric protocol (Inception weights, N real/fake, resize, band triplet, dataset checksum, seed) on the same
dataset family (dataset location, bands, tile size, normalization). Ties, missing or non-finite FIDs and
incomparable measurements never demote a champion: the new version becomes `challenger`.

A version must also pass the quality gate to be crowned, even when there is no champion yet (a registry may have
no champion rather than a bad one): its samples must vary (pixel spread at least `min_spread_ratio` of the real
tiles': a collapsed generator draws one tile) and its FID must stay under the configured ceilings (absolute, and
relative to the real-vs-real floor at the same N). A refused version is registered as `challenger` with the reason.

Image-to-image generators (pix2pix) are scored by PSNR on their held-out split instead (`PairedScore`, higher is
better), compared under the same split and bands only, and crowned only when they beat the per-band linear
regression baseline: a translation that does not is not worth a GAN.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def protocol_key(result: dict[str, Any], eval_seed: int) -> str:
    """What must be equal for two FIDs to be compared (from an evaluation result)."""
    main = next(iter(result["scores"].values()))
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


def paired_protocol_key(result: dict[str, Any]) -> str:
    """What must be equal for two translations' PSNRs to be compared (from a translation result)."""
    split = result["split"]
    return _digest(
        {
            "dataset": result["dataset_checksum"],
            "split": {key: split.get(key) for key in ("by", "fraction", "seed", "block_tiles", "tiles")},
            "inputs": result["input_bands"],
            "targets": result["target_bands"],
            "n": result["n_validation"],
        }
    )


@dataclass(frozen=True)
class PairedScore:
    """A translation's primary metric: PSNR (dB) on the held-out split; higher is better."""

    psnr: float | None
    protocol: str | None
    family: str | None
    over_baseline: float | None = None  # dB above the linear-regression baseline

    @property
    def usable(self) -> bool:
        return self.psnr is not None and math.isfinite(self.psnr)


def decide_paired(new: PairedScore, champion: PairedScore | None) -> Decision:
    if not new.usable:
        return Decision(CHALLENGER, f"no usable PSNR for the new version ({new.psnr}); the champion stays")
    if new.over_baseline is None or new.over_baseline <= 0:
        margin = "unknown" if new.over_baseline is None else f"{new.over_baseline:+.2f} dB"
        return Decision(
            CHALLENGER,
            f"not crowned: PSNR {new.psnr:.2f} dB does not beat the per-band linear regression ({margin} over it)",
        )
    if champion is None:
        return Decision(
            CHAMPION,
            f"first translation with a PSNR ({new.psnr:.2f} dB, {new.over_baseline:+.2f} dB over the linear "
            "baseline): no champion yet",
        )
    if champion.family != new.family:
        return Decision(CHALLENGER, "trained on another dataset family than the champion: not comparable")
    if champion.protocol != new.protocol or not champion.usable:
        return Decision(
            CHALLENGER,
            "the champion was not scored by PSNR on the same split and bands (another kind of generator, or "
            "another split): not comparable; promote by hand or use another tracking.registered_model",
        )
    if new.psnr > champion.psnr:
        return Decision(CHAMPION, f"PSNR {new.psnr:.3f} dB beats the champion's {champion.psnr:.3f} dB")
    return Decision(CHALLENGER, f"PSNR {new.psnr:.3f} dB does not beat the champion's {champion.psnr:.3f} dB")
