"""LeCam regularization of D (Tseng et al., CVPR 2021, "Regularizing Generative Adversarial Networks under Limited
Data").

Two anchors follow D's mean output on real and on generated batches (exponential moving averages, decay 0.99). D's
outputs on real images are pulled back where they rise above the *fake* anchor, and its outputs on fakes where they
fall below the *real* anchor:

    penalty = weight x (E[relu(D(x) - a_fake)^2] + E[relu(a_real - D(G(z)))^2])

With few training images D's outputs on the training set drift away from everything else (it memorizes them) and
its loss goes to zero; the penalty keeps the two output distributions from separating without limit (the paper
relates it to the LeCam divergence) and adds to augmentation rather than replacing it. Outputs are taken as they
come (one per image or a map of patch logits). The anchors are averaged over ranks, so every rank applies the same
penalty, and saved with the checkpoint (resume exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atlas_gan.runtime.distributed import DistributedContext

ANCHOR_DECAY = 0.99


class LeCamRegularizer:
    def __init__(self, weight: float, decay: float = ANCHOR_DECAY) -> None:
        if weight < 0 or not 0 <= decay < 1:
            raise ValueError(f"LeCam weight must be >= 0 and decay in [0, 1); got {weight}, {decay}")
        self.weight, self.decay = weight, decay
        self.anchors: torch.Tensor | None = None  # [real, fake]; the first batch's means until then

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def penalty(self, real_logits: torch.Tensor, fake_logits: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
        """Moves the anchors by this batch's mean outputs (averaged over ranks), then returns the weighted penalty,
        differentiable w.r.t. D's outputs."""
        real, fake = real_logits.float(), fake_logits.float()
        means = torch.stack([real.detach().mean(), fake.detach().mean()])
        if ctx.enabled:
            torch.distributed.all_reduce(means)
            means = means / ctx.world_size
        if self.anchors is None:
            self.anchors = means
        else:
            self.anchors = self.anchors.to(means.device).lerp(means, 1.0 - self.decay)
        anchor_real, anchor_fake = self.anchors
        pulled = F.relu(real - anchor_fake).square().mean() + F.relu(anchor_real - fake).square().mean()
        return pulled * self.weight

    def state_dict(self) -> dict[str, list[float] | None]:
        return {"anchors": None if self.anchors is None else self.anchors.cpu().tolist()}

    def load_state_dict(self, state: dict[str, list[float] | None]) -> None:
        anchors = state.get("anchors")
        self.anchors = None if anchors is None else torch.tensor(anchors, dtype=torch.float32)
