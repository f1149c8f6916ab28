"""Precision and recall of generated samples in feature space (Kynkäänniemi et al. 2019, "Improved Precision and
Recall Metric for Assessing Generative Models"), on the same Inception features as FID.

Each set's manifold is the union of balls around its points, each ball's radius the distance to that point's k-th
nearest neighbour in its own set. Precision is the share of generated samples inside the real tiles' manifold (do
the samples look like real tiles?); recall is the share of real tiles inside the samples' manifold (do the samples
cover what the real tiles show?). FID mixes the two; a generator that draws one kind of tile well scores high
precision and low recall, one that draws noise scores low on both.

Cost grows with the square of N: above `MAX_SAMPLES` per side a seeded subset is scored, and the result says how
many were used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MAX_SAMPLES = 10_000  # per side; 10,000 x 10,000 distances in 2048-d take seconds on 2 CPU cores
CHUNK_ROWS = 1024  # rows of a distance matrix computed at once (bounds memory to CHUNK_ROWS x N floats)


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int  # neighbours that set each ball's radius
    n: int  # samples per side that were scored


def _subset(features: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if features.shape[0] <= limit:
        return features
    generator = torch.Generator().manual_seed(seed)
    return features[torch.randperm(features.shape[0], generator=generator)[:limit]]


def neighbour_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    if points.shape[0] <= k:
        raise ValueError(f"radii from the {k}-th neighbour need more than {k} points, got {points.shape[0]}")
    radii = [
        torch.cdist(chunk, points).kthvalue(k + 1, dim=1).values  # k + 1: each point is its own nearest, at 0
        for chunk in points.split(CHUNK_ROWS)
    ]
    return torch.cat(radii)


def share_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of `queries` within radii[i] of some centre i."""
    inside = [(torch.cdist(chunk, centres) <= radii[None]).any(dim=1) for chunk in queries.split(CHUNK_ROWS)]
    return float(torch.cat(inside).float().mean())


def precision_recall(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 3,
    seed: int = 0,
    limit: int = MAX_SAMPLES,
    device: torch.device | None = None,
) -> PrecisionRecall | None:
    """Precision and recall of `fake` against `real` (feature rows), both subset to the same N (the smaller set's,
    at most `limit`), since the balls shrink as N grows and the two sides must be measured alike. None when N is
    k or less: no point has a k-th neighbour."""
    n = min(real.shape[0], fake.shape[0], limit)
    if n <= k:
        return None
    device = device or torch.device("cpu")
    real_points = _subset(real, n, seed).to(device, torch.float32)
    fake_points = _subset(fake, n, seed + 1).to(device, torch.float32)
    real_radii, fake_radii = neighbour_radii(real_points, k), neighbour_radii(fake_points, k)
    return PrecisionRecall(
        precision=share_inside(fake_points, real_points, real_radii),
        recall=share_inside(real_points, fake_points, fake_radii),
        k=k,
        n=n,
    )


def precision_recall_text(scores: dict[str, Any]) -> str:
    """One line for people: an evaluation's sample precision and recall beside the real tiles' own."""
    if scores.get("sample_precision") is None:
        return f"precision/recall: n/a (N {scores.get('pr_n')} is not above k {scores.get('pr_neighbours')})"
    own = f"precision {scores['sample_precision']:.3f}, recall {scores['sample_recall']:.3f}"
    where = f"(k {scores['pr_neighbours']}, N {scores['pr_n']})"
    if scores.get("floor_precision") is None:
        return f"samples: {own} {where}; real tiles: n/a (too few tiles outside the reference)"
    return (
        f"samples: {own} {where}; real tiles outside the reference: precision {scores['floor_precision']:.3f}, "
        f"recall {scores['floor_recall']:.3f}"
    )
