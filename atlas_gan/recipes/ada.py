"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training GANs with limited data").

Every image D sees, real or generated, in the D update and in the G update, is augmented: each operation below is
applied to each image independently with probability p, its parameters drawn per image. p is not a setting: it
follows how much D overfits. The trainer feeds D's logits on the (augmented) reals to `observe`; every `interval`
steps `adjust` computes the heuristic rt = E[sign(logits)] over those steps and all ranks, and moves p up when
rt > target (D is too sure of the reals) and down otherwise, by images-per-interval / (speed_kimg * 1000): p can go
from 0 to 1 in `speed_kimg` thousand images. Because p < 1 keeps the unaugmented image the most likely outcome, G
cannot learn the augmentations ("non-leaking"); the target 0.6 keeps p well below where that breaks down.

Inputs are (n, bands, h, w) in the training range [-1, 1], any number of bands. Groups, applied in this order:
- `blit` (whole-pixel moves, no interpolation): x-flip (an applied flip flips or not, 1/2 each, as in the paper),
  rotation by k * 90 degrees (k uniform in 0..3), translation by up to 1/8 of the size, rounded to whole pixels.
- `geom` (general geometric): isotropic scaling (lognormal, std 0.2 ln 2), rotation by an angle uniform in
  [-pi, pi), anisotropic scaling (x by s, y by 1/s, lognormal std 0.2 ln 2), the rotation again, and a fractional
  translation (normal, std 1/8 of the size). The two rotations are each drawn with probability 1 - sqrt(1 - p), so
  that an image is rotated with probability p.
- `color`, defined for any band count: brightness (add one N(0, 0.2) offset to every band), contrast (scale each
  value's deviation from the image mean by lognormal(0.5 ln 2)), saturation (scale each pixel's deviation from its
  own mean over the bands by lognormal(ln 2); a no-op for one band). The paper's luma flip and hue rotation are
  left out: they rotate about the RGB luma axis, which has no counterpart for multispectral bands. Color may leave
  [-1, 1], as in the paper.

All geometric operations of a call (blit and geom) are composed into one affine matrix per image, in pixel units
about the image centre, and applied with a single bilinear `grid_sample` with reflection padding: the cost does
not grow with the number of operations, whole-pixel moves land exactly on pixel centres, and the sampling is skipped
when no image drew a transform. The matrices and the grid are computed in float32 (outside autocast) whatever the
image dtype, and the result is cast back. grid_sample is twice differentiable, so gradient penalties work through
the augmentation. Random numbers come from the global torch RNG of the images' device, which checkpoints save.

The state (p, the rt accumulators, the step counter, the last rt) is in buffers, so `state_dict` carries it and a
resumed run adjusts at the same steps. p, the counter and rt stay on the CPU (`.to()` does not move the module);
the accumulators follow the logits' device, so `observe` never waits for the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from atlas_gan.runtime.distributed import DistributedContext

GROUPS = ("blit", "geom", "color")

_LN2 = math.log(2.0)
_MAX_P = math.nextafter(1.0, 0.0)  # p stays below 1
_WARP_CHECK = 1e-3  # test for an all-identity batch (a device sync) only while it is at least this likely


# ---- matrices: (n, 3, 3), mapping output pixel coordinates (about the image centre) to input ones -------------------


def _affine(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor
) -> torch.Tensor:
    """Rows (a b tx), (c d ty), (0 0 1) from per-image values, each of shape (n,)."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, tx, c, d, ty, zero, zero, one], dim=1).view(-1, 3, 3)


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(sx)
    return _affine(sx, zero, zero, sy, zero, zero)


def _rotate(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(cos)
    return _affine(cos, -sin, sin, cos, zero, zero)


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _affine(one, zero, zero, one, tx, ty)


def _gated(values: torch.Tensor, p: float, identity: float) -> torch.Tensor:
    """`values` for a fraction p of the images (one draw per image, dim 0), `identity` for the rest."""
    shape = (values.shape[0],) + (1,) * (values.dim() - 1)
    applied = torch.rand(shape, device=values.device) < p
    return torch.where(applied, values, torch.full_like(values, identity))


def blit_matrices(
    n: int, p: float, height: int, width: int, device: torch.device | str = "cpu", translate: float = 0.125
) -> torch.Tensor:
    """Inverse matrices of x-flip, k * 90-degree rotation, whole-pixel translation (up to `translate` of the size)."""
    kw = {"device": device, "dtype": torch.float32}
    flip = _gated(torch.randint(0, 2, (n,), device=device).float(), p, 0.0)
    inverse = _scale(1 - 2 * flip, torch.ones(n, **kw))  # a flip is its own inverse
    k = _gated(torch.randint(0, 4, (n,), device=device).float(), p, 0.0).long()
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], **kw)[k]  # exact, unlike torch.cos(k * pi / 2)
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], **kw)[k]
    inverse = inverse @ _rotate(cos, -sin)
    shift = _gated((torch.rand(n, 2, **kw) * 2 - 1) * translate, p, 0.0)
    shift = torch.round(shift * torch.tensor([width, height], **kw))
    return inverse @ _translate(-shift[:, 0], -shift[:, 1])


def geom_matrices(n: int, p: float, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse matrices of isotropic scaling, rotation, anisotropic scaling, rotation and fractional translation."""
    kw = {"device": device, "dtype": torch.float32}
    p_rotate = 1 - math.sqrt(1 - min(p, 1.0))  # two chances to rotate: rotated with probability p

    def rotation() -> torch.Tensor:
        angle = _gated((torch.rand(n, **kw) * 2 - 1) * math.pi, p_rotate, 0.0)
        return _rotate(torch.cos(angle), -torch.sin(angle))

    iso = _gated(torch.exp(torch.randn(n, **kw) * 0.2 * _LN2), p, 1.0)
    inverse = _scale(1 / iso, 1 / iso) @ rotation()
    aniso = _gated(torch.exp(torch.randn(n, **kw) * 0.2 * _LN2), p, 1.0)
    inverse = inverse @ _scale(1 / aniso, aniso) @ rotation()
    shift = _gated(torch.randn(n, 2, **kw) * 0.125, p, 0.0) * torch.tensor([width, height], **kw)
    return inverse @ _translate(-shift[:, 0], -shift[:, 1])


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample each image at its matrix's output-to-input mapping (bilinear, reflection padding) in one grid_sample."""
    n, bands, height, width = images.shape
    work = torch.promote_types(images.dtype, torch.float32)
    # pixel units about the centre -> grid_sample's [-1, 1] (align_corners=False: pixel edges at +-1)
    to_unit = torch.tensor([[1.0, height / width, 2 / width], [width / height, 1.0, 2 / height]], device=images.device)
    theta = matrices[:, :2, :].to(work) * to_unit.to(work)
    grid = F.affine_grid(theta, [n, bands, height, width], align_corners=False)
    out = F.grid_sample(images.to(work), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.to(images.dtype)


# ---- color -----------------------------------------------------------------------------------------------------------


def _per_image(x: torch.Tensor, p: float, values: torch.Tensor, identity: float) -> torch.Tensor:
    return _gated(values, p, identity).view(-1, 1, 1, 1).to(x.dtype)


def brightness(x: torch.Tensor, p: float) -> torch.Tensor:
    return x + _per_image(x, p, torch.randn(x.shape[0], device=x.device) * 0.2, 0.0)


def contrast(x: torch.Tensor, p: float) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_image(x, p, torch.exp(torch.randn(x.shape[0], device=x.device) * 0.5 * _LN2), 1.0) + mean


def saturation(x: torch.Tensor, p: float) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _per_image(x, p, torch.exp(torch.randn(x.shape[0], device=x.device) * _LN2), 1.0) + mean


def color(x: torch.Tensor, p: float) -> torch.Tensor:
    return saturation(contrast(brightness(x, p), p), p)


_GEOMETRIC: dict[str, Callable[..., torch.Tensor]] = {"blit": blit_matrices, "geom": geom_matrices}
_GATES = {"blit": 3, "geom": 4}  # independent chances per image of a non-identity draw (the two rotations: one)


class AdaptiveAugment(nn.Module):
    """`augment(images)` with the current p; `observe(real_logits)` every D step, `adjust(images, ctx)` every step."""

    def __init__(
        self,
        groups: Sequence[str] = GROUPS,
        target: float = 0.6,
        interval: int = 4,
        speed_kimg: float = 500.0,
        initial_p: float = 0.0,
    ) -> None:
        super().__init__()
        groups = [groups] if isinstance(groups, str) else list(groups)
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown ADA groups {unknown}; known: {list(GROUPS)}")
        if not groups:
            raise ValueError(f"ADA needs at least one group of {list(GROUPS)}")
        if not 0 < target < 1:
            raise ValueError(f"ADA target must be in (0, 1), got {target}")
        if interval < 1:
            raise ValueError(f"ADA interval must be at least 1, got {interval}")
        if not speed_kimg > 0:
            raise ValueError(f"ADA speed_kimg must be positive, got {speed_kimg}")
        if not 0 <= initial_p < 1:
            raise ValueError(f"ADA initial_p must be in [0, 1), got {initial_p}")
        self.groups = [g for g in GROUPS if g in groups]  # the paper's order, whatever the config's
        self.target = float(target)
        self.interval = int(interval)
        self.speed_kimg = float(speed_kimg)
        # set directly: register_buffer refuses a name the class already uses (the float property `p`)
        self._buffers["p"] = torch.tensor(float(initial_p), dtype=torch.float64)
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sign_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_rt", torch.tensor(math.nan, dtype=torch.float64))

    @property
    def p(self) -> float:
        """The current augmentation probability."""
        return float(self._buffers["p"])

    @property
    def rt(self) -> float | None:
        """The overfitting heuristic E[sign(D(real))] of the last adjustment (None before the first)."""
        value = float(self.last_rt)
        return None if math.isnan(value) else value

    def _apply(self, fn: Callable[..., torch.Tensor], recurse: bool = True) -> AdaptiveAugment:
        """`.to()`, `.cuda()`, `.half()` leave the module as it is: moving p to the device would make every forward
        wait for it, and a lower precision would round it."""
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augmented images, same shape and dtype, differentiable; `images` itself while p is 0."""
        p = self.p
        if p == 0:
            return images
        n, _, height, width = images.shape
        device = images.device
        with torch.autocast(device.type, enabled=False):  # float32 matrices and grid, even inside bf16 autocast
            x = images.to(torch.promote_types(images.dtype, torch.float32))
            geometric = [g for g in self.groups if g in _GEOMETRIC]
            if geometric:
                matrices = _GEOMETRIC[geometric[0]](n, p, height, width, device)
                for group in geometric[1:]:
                    matrices = matrices @ _GEOMETRIC[group](n, p, height, width, device)
                # Skipping the sampling needs a look at the matrices (a device sync): only worth it while likely.
                identity_chance = (1 - p) ** (n * sum(_GATES[g] for g in geometric))
                eye = torch.eye(3, device=device).expand_as(matrices)
                if identity_chance < _WARP_CHECK or not torch.equal(matrices, eye):
                    x = warp(x, matrices)
            if "color" in self.groups:
                x = color(x, p)
        return x.to(images.dtype)

    @torch.no_grad()
    def observe(self, real_logits: torch.Tensor) -> None:
        """Count the signs of D's logits on (augmented) reals; nothing is read back from the device."""
        logits = real_logits.detach()
        if self.sign_sum.device != logits.device:
            self.sign_sum, self.sign_count = self.sign_sum.to(logits.device), self.sign_count.to(logits.device)
        self.sign_sum += torch.sign(logits).sum(dtype=torch.float64)
        self.sign_count += logits.numel()

    def adjust(self, images_per_step: int, ctx: DistributedContext) -> float | None:
        """Call once per step on every rank, with the images per step over all ranks. Every `interval` calls: rt
        over the interval and all ranks, p moved towards the target, the accumulators reset; returns rt (else None,
        also when nothing was observed: p then stays)."""
        self.steps += 1
        if int(self.steps) % self.interval:
            return None
        totals = torch.stack([self.sign_sum, self.sign_count])
        if ctx.enabled:
            totals = totals.to(ctx.device)  # NCCL reduces only device tensors
            dist.all_reduce(totals)
        signs, count = totals.tolist()
        self.sign_sum.zero_()
        self.sign_count.zero_()
        if count == 0:
            return None
        rt = signs / count
        direction = (rt > self.target) - (rt < self.target)
        step = images_per_step * self.interval / (self.speed_kimg * 1000)
        self._buffers["p"].fill_(min(max(self.p + direction * step, 0.0), _MAX_P))
        self.last_rt.fill_(rt)
        return rt

    def extra_repr(self) -> str:
        return f"groups={self.groups}, target={self.target}, interval={self.interval}, speed_kimg={self.speed_kimg}"
