"""Evaluation: the FID Inception network, its weights, FID/KID/IS and cached reference statistics."""
