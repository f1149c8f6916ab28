"""Evaluation: the FID Inception network, its weights, FID/KID/IS and cached reference statistics."""

from typing import Any


def main_scores(result: dict[str, Any]) -> dict[str, Any]:
    """An image evaluation's scores for its first band triplet: the one its top-level FID, floor and spread are."""
    return next(iter(result["scores"].values()))
