"""The FastGAN recipe: the adversarial recipe plus the self-supervised reconstruction term on D (Liu et al. 2021).

Each D update also asks D's two small decoders to reconstruct the (augmented) real batch and a random quarter of it
from D's own features (`FastGANDiscriminator.forward_with_reconstruction`), weighted by
`train.model.reconstruction_weight`; fakes are never reconstructed. Everything else (hinge loss, DiffAugment, the
update order, EMA) is the adversarial recipe's. The quarter is drawn from torch's RNG, so a resumed run draws the
same quarters.
"""

from __future__ import annotations

import torch

from atlas_gan.recipes.adversarial import AdversarialRecipe


class FastGANRecipe(AdversarialRecipe):
    name = "fastgan"
    extra_loss_name = "loss_reconstruction"

    @property
    def reconstruction_weight(self) -> float:
        return float(self.options.reconstruction_weight)

    def discriminate_real(
        self, real: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        augmented = self.augmented(real)
        quarter = int(torch.randint(4, ()))
        logits, reconstruction = self.D.forward_with_reconstruction(augmented, labels, quarter)
        return logits, reconstruction * self.reconstruction_weight
