"""Champion or challenger: the promotion rule, free of MLflow so it can be read and tested on its own.

A new version becomes `champion` only when its FID is strictly lower than the champion's, both measured under the
same metric protocol (Inception weights, N real/fake, resize, band triplet, dataset checksum, seed) on the same
dataset family (dataset location, bands, tile size, normalization). Ties, missing or non-finite FIDs and
incomparable measurements never demote a champion: the new version becomes `challenger`.
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

    @property
    def usable(self) -> bool:
        return self.fid is not None and math.isfinite(self.fid)


@dataclass(frozen=True)
class Decision:
    alias: str  # CHAMPION or CHALLENGER
    reason: str


def decide(new: Score, champion: Score | None) -> Decision:
    if not new.usable:
        return Decision(CHALLENGER, f"no usable FID for the new version ({new.fid}); the champion stays")
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
