"""Paired image metrics, per band: L1, PSNR, SSIM, and the spectral angle across bands (SAM).

Images are in the trainer's range [-1, 1]; scores are reported in the dataset's normalized units, where 1 is the
span from each band's 2nd to 98th percentile (so PSNR's peak is that span: `data_range` 1), and L1/RMSE again in
the source's physical units (the manifest's per-band scale). SAM needs physical values: an angle between spectra
depends on their offsets, so it is measured after inverting the normalization; None for a single band. SSIM uses
the usual 11x11 Gaussian window (sigma 1.5) with K1 0.01, K2 0.03 (Wang et al. 2004), over valid (unpadded) pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return g[:, None] * g[None, :]


def ssim_per_band(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each band over all images: (n, bands, h, w) pairs -> (bands,). Images smaller than the window
    use a window of their size."""
    bands, size = pred.shape[1], min(SSIM_WINDOW, pred.shape[-1], pred.shape[-2])
    window = _gaussian_window(size, SSIM_SIGMA).to(pred.dtype).expand(bands, 1, size, size).contiguous()
    x, y = pred.double(), target.double()
    window = window.double()

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=bands)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=(0, 2, 3)).float()


def psnr(mse: float, data_range: float = 1.0) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def spectral_angle_degrees(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Mean angle between predicted and target spectra, per pixel, in degrees: (n, bands, h, w) physical values.
    Pixels where either spectrum is all zeros are skipped. None for a single band."""
    if pred.shape[1] < 2:
        return None
    dot = (pred * target).sum(axis=1)
    norms = np.linalg.norm(pred, axis=1) * np.linalg.norm(target, axis=1)
    valid = norms > 0
    if not valid.any():
        return None
    cosine = np.clip(dot[valid] / norms[valid], -1.0, 1.0)
    return float(np.degrees(np.arccos(cosine)).mean())


def paired_scores(
    pred: torch.Tensor, target: torch.Tensor, bands: list[str], scales: np.ndarray, offsets: np.ndarray
) -> dict[str, Any]:
    """Every metric of `pred` against `target` ((n, bands, h, w) in [-1, 1]); `scales`/`offsets`: the target
    bands' normalization (raw = normalized x scale + offset)."""
    p01, t01 = (pred.float() + 1) / 2, (target.float() + 1) / 2  # normalized units
    error = p01 - t01
    mse = error.square().mean(dim=(0, 2, 3)).double().numpy()
    l1 = error.abs().mean(dim=(0, 2, 3)).double().numpy()
    ssim = ssim_per_band(p01, t01).double().numpy()
    shape = (1, -1, 1, 1)
    physical_pred = p01.double().numpy() * scales.reshape(shape) + offsets.reshape(shape)
    physical_target = t01.double().numpy() * scales.reshape(shape) + offsets.reshape(shape)
    per_band = {
        band: {
            "psnr": psnr(float(mse[i])),
            "ssim": float(ssim[i]),
            "l1": float(l1[i]),
            "l1_physical": float(l1[i] * scales[i]),
            "rmse_physical": float(math.sqrt(mse[i]) * scales[i]),
        }
        for i, band in enumerate(bands)
    }
    return {
        "psnr": float(np.mean([v["psnr"] for v in per_band.values()])),
        "ssim": float(ssim.mean()),
        "l1": float(l1.mean()),
        "sam_degrees": spectral_angle_degrees(physical_pred, physical_target),
        "per_band": per_band,
    }


class LinearBaseline:
    """Per-band least-squares regression of the target bands on the input bands (plus an intercept), fitted on
    training pixels: what a translation has to beat to be worth a GAN."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """inputs (n, in, h, w), targets (n, out, h, w) training tiles in [-1, 1]."""
        x = inputs.double().permute(0, 2, 3, 1).reshape(-1, inputs.shape[1])
        y = targets.double().permute(0, 2, 3, 1).reshape(-1, targets.shape[1])
        design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        self.coefficients = torch.linalg.lstsq(design, y).solution  # (in + 1, out)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.double().permute(0, 2, 3, 1)
        y = x @ self.coefficients[:-1] + self.coefficients[-1]
        return y.permute(0, 3, 1, 2).clamp(-1, 1).float()
