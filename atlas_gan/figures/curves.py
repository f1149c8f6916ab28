"""Training curves against kimg (thousands of real images shown): losses, speed, augmentation, FID/KID."""

from __future__ import annotations

from typing import Any

import numpy as np

from atlas_gan.figures.canvas import new_figure, png_bytes


def smoothed(values: np.ndarray, half_life: float) -> np.ndarray:
    """Exponential moving average with the given half-life in points (bias-corrected at the start). Missing values
    (NaN: a loss a record does not have, e.g. D's in super-resolution's pixel phase) stay missing and are skipped."""
    if len(values) == 0 or half_life <= 0:
        return values
    beta = 0.5 ** (1.0 / half_life)
    out, mean, weight = np.full(len(values), np.nan), 0.0, 0.0
    for i, value in enumerate(values):
        if np.isnan(value):
            continue
        mean, weight = beta * mean + (1 - beta) * value, beta * weight + (1 - beta)
        out[i] = mean / weight
    return out


def current_attempt(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the history a resumed run continues: log.jsonl keeps every attempt, so after a run stopped at
    step 1,500 and resumed from its checkpoint of step 1,000, the first attempt's records past 1,000 describe
    training that was thrown away (and would draw the curves back and forth). A record whose step is below the one
    before it starts a new attempt: the kept records past its step are dropped."""
    kept: list[dict[str, Any]] = []
    for record in records:
        step = record.get("step")
        if isinstance(step, int) and kept and step < (kept[-1].get("step") or 0):
            while kept and (kept[-1].get("step") or 0) > step:
                kept.pop()
        kept.append(record)
    return kept


def training_curves_png(records: list[dict[str, Any]], title: str, width_px: int = 1200) -> bytes:
    """Four panels from log.jsonl records: losses (raw faint, smoothed bold), images/s, augmentation p, and FID
    (with the real-vs-real floor) and KID from evaluation records (a translation's PSNR against its baseline); sample
    precision and recall in the augmentation panel's place when augmentation is not adaptive, in a fifth panel
    when it is; a resumed run's records from what it resumed (`current_attempt`)."""
    records = current_attempt(records)
    steps = [r for r in records if "event" not in r and "images_seen" in r]
    evaluations = [r for r in records if r.get("event") == "evaluate" and r.get("fid") is not None]
    augment = np.array([r.get("augment_p", np.nan) for r in steps], dtype=float)
    adaptive = bool(np.isfinite(augment).any())
    recalled = [r for r in evaluations if r.get("sample_recall") is not None]
    rows = 3 if adaptive and recalled else 2  # precision/recall take the augmentation panel when it is not adaptive
    figure = new_figure(width_px, int(width_px * 0.31 * rows))
    figure.suptitle(title, fontsize="medium")
    losses_axes, fid_axes, speed_axes, augment_axes, *more = figure.subplots(rows, 2).ravel()
    kimg = np.array([r["images_seen"] / 1000 for r in steps])

    loss_keys = sorted({k for r in steps for k in r if k.startswith("loss_")})
    for key in loss_keys:
        values = np.array([r.get(key, np.nan) for r in steps], dtype=float)
        (line,) = losses_axes.plot(kimg, values, linewidth=0.6, alpha=0.3)
        losses_axes.plot(kimg, smoothed(values, max(1.0, len(values) / 30)), color=line.get_color(), label=key)
    _finish(losses_axes, "losses", "loss", bool(loss_keys))

    translations = [r for r in records if r.get("event") == "evaluate_translation"]
    unpaired = [r for r in records if r.get("event") == "evaluate_unpaired"]
    if translations and not evaluations:
        _paired_panel(fid_axes, translations, steps)
    elif unpaired and not evaluations:
        _unpaired_panel(fid_axes, unpaired, steps)
    elif evaluations:
        eval_kimg = np.array([_kimg_of(r, steps) for r in evaluations])
        fid_axes.plot(eval_kimg, [r["fid"] for r in evaluations], marker="o", color="tab:red", label="FID")
        floors = [r.get("floor_fid") for r in evaluations]
        if all(f is not None for f in floors):
            fid_axes.plot(eval_kimg, floors, linestyle="--", color="tab:gray", label="real-vs-real floor")
        n = evaluations[-1].get("n_fake")
        kids = [r.get("kid") for r in evaluations]
        with_kid = all(k is not None for k in kids)
        _finish(fid_axes, f"FID against the real tiles (N={n})", "FID", legend=not with_kid)
        if with_kid:
            kid_axes = fid_axes.twinx()
            kid_axes.plot(eval_kimg, kids, marker="s", color="tab:blue", linewidth=0.8, label="KID (right axis)")
            kid_axes.set_ylabel("KID", color="tab:blue")
            # one legend for both axes: a KID line ending on the FID floor's height must not read as FID at the floor
            fid_handles, fid_labels = fid_axes.get_legend_handles_labels()
            kid_handles, kid_labels = kid_axes.get_legend_handles_labels()
            fid_axes.legend(fid_handles + kid_handles, fid_labels + kid_labels, fontsize="small", loc="best")
    else:
        _finish(fid_axes, "FID: no evaluation yet (train.evaluate_every)", "FID", False)

    speeds = np.array([r.get("images_per_s") or np.nan for r in steps], dtype=float)
    speed_axes.plot(kimg, speeds, color="tab:green")
    _finish(speed_axes, "training speed", "images / s", False)

    if adaptive:
        augment_axes.plot(kimg, augment, color="tab:purple")
        augment_axes.set_ylim(0, max(0.05, float(np.nanmax(augment)) * 1.1))
        _finish(augment_axes, "adaptive augmentation probability p", "p", False)
    elif not recalled:
        _finish(augment_axes, "augmentation: not adaptive in this recipe", "p", False)
    if recalled:
        _precision_recall_panel(more[0] if adaptive else augment_axes, recalled, steps)
    for axes in more[1:] if adaptive else more:
        axes.set_visible(False)
    return png_bytes(figure)


def _precision_recall_panel(axes: Any, evaluations: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """Sample precision and recall per evaluation, with what real tiles outside the reference set score (dashed)."""
    eval_kimg = np.array([_kimg_of(r, steps) for r in evaluations])
    for key, color, name in (("precision", "tab:orange", "precision"), ("recall", "tab:cyan", "recall")):
        axes.plot(eval_kimg, [r[f"sample_{key}"] for r in evaluations], marker="o", color=color, label=name)
        floors = [r.get(f"floor_{key}") for r in evaluations]
        if all(f is not None for f in floors):
            axes.plot(eval_kimg, floors, linestyle="--", color=color, linewidth=0.8, label=f"real tiles' {name}")
    axes.set_ylim(-0.02, 1.02)
    _finish(axes, "samples among real tiles (precision), real tiles among samples (recall)", "share", True)


def _paired_panel(axes: Any, evaluations: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """A translation's PSNR on the held-out tiles, with the baseline it must beat (linear regression, bicubic) and
    super-resolution's pixel-loss model."""
    eval_kimg = np.array([_kimg_of(r, steps) for r in evaluations])
    axes.plot(eval_kimg, [r["psnr"] for r in evaluations], marker="o", color="tab:red", label="generator")
    name = evaluations[-1].get("baseline", "linear")
    axes.plot(eval_kimg, [r["baseline_psnr"] for r in evaluations], linestyle="--", color="tab:gray", label=name)
    pixel = [(k, r["pixel_psnr"]) for k, r in zip(eval_kimg, evaluations, strict=True) if r.get("pixel_psnr")]
    if pixel:
        axes.plot(*zip(*pixel, strict=True), linestyle=":", marker="x", color="tab:blue", label="pixel-loss model")
    n = evaluations[-1].get("n_validation")
    _finish(axes, f"PSNR on the held-out tiles (N={n}), higher is better", "PSNR (dB)", True)


def _unpaired_panel(axes: Any, evaluations: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """An unpaired translation's FID against the other domain, with the FID of not translating at all."""
    eval_kimg = np.array([_kimg_of(r, steps) for r in evaluations])
    axes.plot(eval_kimg, [r["fid"] for r in evaluations], marker="o", color="tab:red", label="A translated vs B")
    identity = [r["identity_fid"] for r in evaluations]
    axes.plot(eval_kimg, identity, linestyle="--", color="tab:gray", label="A as it is vs B")
    n = evaluations[-1].get("n_a")
    _finish(axes, f"FID of held-out A (N={n}) against held-out B, lower is better", "FID", True)


def _kimg_of(evaluation: dict[str, Any], steps: list[dict[str, Any]]) -> float:
    if "images_seen" in evaluation:
        return evaluation["images_seen"] / 1000
    if not steps:
        return 0.0
    return float(np.interp(evaluation["step"], [r["step"] for r in steps], [r["images_seen"] for r in steps])) / 1000


def _finish(axes: Any, title: str, ylabel: str, legend: bool) -> None:
    axes.set_title(title, fontsize="small")
    axes.set_xlabel("kimg (thousands of real images shown)")
    axes.set_ylabel(ylabel)
    axes.grid(True, linewidth=0.3, alpha=0.5)
    if legend:
        axes.legend(fontsize="small", loc="best")
