"""Which of a dataset's bands a generator reads and which it draws: none and all for a latent generator, the
configured input and target bands for pix2pix, all and all for CycleGAN (its domains differ by label, not band), and
for super-resolution its target bands (all by default) read either as themselves degraded or, for real pairs, as a
coarser co-registered source's bands."""

from __future__ import annotations

from dataclasses import dataclass

from atlas_gan.config import CycleGANOptions, Pix2PixOptions, SuperResOptions, TrainConfig
from atlas_gan.geo.bands import SceneError, select_bands


@dataclass(frozen=True)
class BandRoles:
    """Which of the dataset's bands a generator reads and which it draws (positions and names)."""

    inputs: list[int] | None  # None: a latent generator
    outputs: list[int]
    names: list[str]  # the dataset's bands

    @property
    def input_names(self) -> list[str] | None:
        return None if self.inputs is None else [self.names[i] for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [self.names[i] for i in self.outputs]


def band_roles(cfg: TrainConfig, bands: list[str]) -> BandRoles:
    """The bands a config's generator reads and draws, among the dataset's `bands`."""
    options = cfg.model
    every = list(range(len(bands)))
    if isinstance(options, CycleGANOptions):
        return BandRoles(every, every, bands)
    if not isinstance(options, Pix2PixOptions | SuperResOptions):
        return BandRoles(None, every, bands)
    try:
        outputs = every if options.target_bands is None else select_bands(bands, options.target_bands)
        inputs = outputs if options.input_bands is None else select_bands(bands, options.input_bands)
    except SceneError as exc:
        raise ValueError(f"train.model bands: {exc} (the dataset's)") from None
    return BandRoles(inputs, outputs, bands)
