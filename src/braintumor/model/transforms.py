"""Train and eval presets, side by side (after torchvision's classification reference, presets.py).

Both take the (S, S) uint8 images that `preprocess.prepare_image` makes (S = model.resize_size), which is also
what the training cache stores, one scan `(1, S, S)` or a batch `(B, 1, S, S)`, on any device. Augmentation runs per
batch on the training device: one affine warp (`grid_sample`) does the random resized crop, flip and rotation of
every scan at once, so a GPU is never starved by per-image CPU work.

The same presets feed the augmentation preview, training, evaluation, `braintumor predict` and the served model:
what is previewed is what is trained, and what is served is what was evaluated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from braintumor.config import AugmentConfig, ModelConfig, PreprocessConfig
from braintumor.scans.preprocess import ScanPrep

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ASPECT_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default range
CURVE_POINTS = 4  # knots of the random intensity curve (augment.intensity_curve), besides black
INTENSITY_DRAWS = 6  # uniform draws per scan for the intensity step (apply_intensity)


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a scan into the network's input the way training did; saved in models/model.pt.

    `scan` makes the (S, S) uint8 image from a decoded scan (preprocess.py); the eval preset then centre-crops
    `image_size` and normalises with `mean` / `std`.
    """

    scan: ScanPrep
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize_size(self) -> int:
        return self.scan.size

    @classmethod
    def from_config(cls, model: ModelConfig, preprocess: PreprocessConfig) -> Preprocessing:
        scan = ScanPrep(
            size=model.resize_size,
            head_crop=preprocess.head_crop,
            crop_threshold=preprocess.crop_threshold,
            crop_margin=preprocess.crop_margin,
            intensity=preprocess.intensity,
            percentiles=tuple(preprocess.percentiles),
        )
        return cls(scan=scan, image_size=model.image_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict) -> Preprocessing:
        if "scan" in spec:
            scan = ScanPrep(**{**spec["scan"], "percentiles": tuple(spec["scan"]["percentiles"])})
        else:  # model files of format 1: shorter side resized and centre-cropped, no intensity step
            scan = ScanPrep(size=int(spec["resize_size"]))
        return cls(scan=scan, image_size=int(spec["image_size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]))


def _as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim == 3:  # one scan (1, S, S)
        return x[None], True
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (1, S, S) or (B, 1, S, S) grayscale images, got shape {tuple(x.shape)}")
    return x, False


def _normalise(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(B, 1, H, W) floats in [0, 1] -> (B, 3, H, W) with ImageNet statistics (the scan repeated per channel)."""
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


class EvalPreset:
    """Centre crop image_size from the (S, S) image, scale to [0, 1], normalise:
    (…, 1, S, S) uint8 -> (…, 3, H, W)."""

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The centre crop alone, still uint8 (what the report and Grad-CAM overlays show)."""
        size = self.prep.image_size
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        return x[..., top : top + size, left : left + size]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, single = _as_batch(x)
        out = _normalise(self.crop(batch).float() / 255.0, self.prep)
        return out[0] if single else out


class TrainPreset:
    """Random resized crop (area `crop_scale`, aspect 3/4..4/3), horizontal flip, rotation, then intensity
    augmentation against source shortcuts (gamma, brightness, contrast, blur/sharpen, noise), each configurable
    and switchable; then normalise like EvalPreset.

    Parameters are drawn per scan from `generator` (a CPU torch.Generator; the global one if None), so a seeded
    epoch augments identically after a resume, and on CPU and GPU alike except for the noise pixels (drawn on the
    device from a seed the generator gives).
    """

    def __init__(self, prep: Preprocessing, augment: AugmentConfig, *, normalise: bool = True) -> None:
        self.prep, self.augment, self.normalise = prep, augment, normalise

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, single = _as_batch(x)
        n, size = batch.shape[0], self.prep.image_size
        theta = self.crop_flip_rotate(n, generator).to(batch.device)  # (B, 2, 3)
        grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
        out = F.grid_sample(
            batch.float() / 255.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B, 1, H, W) in [0, 1]
        out = self.intensity(out, generator)
        out = _normalise(out, self.prep) if self.normalise else (out * 255.0).round().to(torch.uint8)
        return out[0] if single else out

    def crop_flip_rotate(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Affine matrices mapping output coordinates to input coordinates ([-1, 1] on both)."""
        aug = self.augment
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)  # one row of draws per scan
        area = aug.crop_scale[0] + (aug.crop_scale[1] - aug.crop_scale[0]) * u[:, 0]
        log_lo, log_hi = math.log(ASPECT_RATIO[0]), math.log(ASPECT_RATIO[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        ratio = torch.minimum(torch.maximum(ratio, area), 1 / area)  # keep the crop inside the square
        half_w = torch.sqrt(area * ratio)  # crop half-extent as a fraction of the square's half-side
        half_h = torch.sqrt(area / ratio)
        cx = (2 * u[:, 2] - 1) * (1 - half_w)  # the crop lies inside the square
        cy = (2 * u[:, 3] - 1) * (1 - half_h)
        flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if aug.hflip else torch.ones(n, dtype=torch.float64)
        degrees = aug.rotation_degrees * (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
        cos, sin = torch.cos(torch.deg2rad(degrees)), torch.sin(torch.deg2rad(degrees))
        theta = torch.stack(
            [
                torch.stack([half_w * cos * flip, -half_h * sin, cx], dim=1),
                torch.stack([half_w * sin * flip, half_h * cos, cy], dim=1),
            ],
            dim=1,
        )
        return theta.float()

    def intensity(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> the same, each scan with its own gamma, brightness, contrast, blur or sharpening
        and noise: a scan's look then says nothing about its class, only its anatomy does."""
        n = x.shape[0]
        draws = torch.rand(n, INTENSITY_DRAWS, generator=generator)  # one row of draws per scan
        curves = torch.rand(n, CURVE_POINTS, generator=generator) if self.augment.intensity_curve > 0 else None
        noise_seeds = (
            torch.randint(2**62, (1,), generator=generator).expand(n) if self.augment.noise > 0 else None
        )  # one seed per batch: the noise of a whole batch at once
        return apply_intensity(x, self.augment, draws, curves=curves, noise_seeds=noise_seeds)


def apply_intensity(
    x: torch.Tensor,
    augment: AugmentConfig,
    draws: torch.Tensor,
    *,
    curves: torch.Tensor | None = None,
    noise_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The train preset's intensity step with its random numbers given: x (B, 1, H, W) in [0, 1]; draws (B, 6)
    uniform in [0, 1) (gamma, brightness, contrast, blur/sharpen, noise level, curve or not); curves (B, K) the
    curve knots (when augment.intensity_curve > 0); noise_seeds (B,) the seeds of the noise pixels (when
    augment.noise > 0), drawn on x's device: scans that share a seed share one draw of the whole batch."""
    aug, n = augment, x.shape[0]
    draws = draws.to(x.device)
    signed = 2 * draws - 1  # uniform in [-1, 1]
    if aug.intensity_curve > 0:
        x = _random_curve(x, curves.to(x.device), apply=draws[:, 5] < aug.intensity_curve)
    if aug.gamma > 1:
        x = x.clamp_min(0.0) ** torch.exp(math.log(aug.gamma) * signed[:, 0]).view(n, 1, 1, 1)
    if aug.brightness > 0:
        x = x * (1 + aug.brightness * signed[:, 1]).view(n, 1, 1, 1)
    if aug.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + aug.contrast * signed[:, 2]).view(n, 1, 1, 1) + mean
    if aug.blur_sharpen > 0:  # s < 0 blurs (s = -1: fully blurred), s > 0 sharpens (unsharp mask)
        detail = x - _gaussian_blur(x)
        x = x + (aug.blur_sharpen * signed[:, 3]).view(n, 1, 1, 1) * detail
    if aug.noise > 0:
        std = (aug.noise * draws[:, 4]).view(n, 1, 1, 1)
        x = x + std * _noise(x.shape, noise_seeds, x.device)
    return x.clamp(0.0, 1.0)


def _noise(shape: torch.Size, seeds: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Standard normal pixels drawn on `device` (no (B, 1, H, W) copy to a GPU): one draw for each run of equal
    seeds, so a batch that shares one seed costs one call, and a scan with its own seed gets its own pixels."""
    parts = []
    for seed, count in zip(*torch.unique_consecutive(seeds, return_counts=True)):
        generator = torch.Generator(device=device).manual_seed(int(seed))
        parts.append(torch.randn((int(count), *shape[1:]), device=device, generator=generator))
    return torch.cat(parts)


class ShiftedPreset:
    """The eval preset with the train preset's intensity augmentation (no crop, flip or rotation) at `strength`
    times its configured strength: val scans as another scanner or sequence might render them. Used to fit the
    temperature under shift (train.calibration: shifted).

    A copy of `count` scans, addressed by index: scan i always gets row i of a table drawn once from `seed`, so the
    copy depends on the scans, the seed and the strength alone, not on the batch size or the order of calls. The
    table is a Latin hypercube (each draw's `count` values spread one per stratum, then shuffled): every copy holds
    the whole range of each shift in the same proportions, so a temperature fitted on it barely moves with `seed`.
    """

    def __init__(self, prep: Preprocessing, augment: AugmentConfig, strength: float, seed: int, count: int) -> None:
        self.prep = prep
        self.eval = EvalPreset(prep)
        self.augment = stronger_intensity(augment, strength)
        generator = torch.Generator().manual_seed(seed)
        self.draws = latin_hypercube(count, INTENSITY_DRAWS, generator)
        self.noise_seeds = torch.randint(2**62, (count,), generator=generator)

    def __call__(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, S, S) uint8, the scans numbered `indices` (B,) in the copy -> (B, 3, H, W)."""
        indices = torch.as_tensor(indices).cpu()
        out = apply_intensity(
            self.eval.crop(x).float() / 255.0, self.augment, self.draws[indices], noise_seeds=self.noise_seeds[indices]
        )
        return _normalise(out, self.prep)


def latin_hypercube(n: int, dims: int, generator: torch.Generator) -> torch.Tensor:
    """(n, dims) in [0, 1): in each column, one value in each of the n strata [k/n, (k+1)/n), in random order."""
    jitter = torch.rand(n, dims, generator=generator, dtype=torch.float64)
    order = torch.stack([torch.randperm(n, generator=generator) for _ in range(dims)], dim=1)
    return ((order + jitter) / n).float().clamp(max=1 - 2**-24)


def stronger_intensity(augment: AugmentConfig, strength: float) -> AugmentConfig:
    """`augment` with gamma raised to `strength` and brightness, contrast, blur/sharpen and noise times `strength`,
    each kept within its allowed range; intensity curves off (they make another image, not another scanner)."""
    return replace(
        augment,
        gamma=min(augment.gamma**strength, 4.0),
        brightness=min(augment.brightness * strength, 0.95),
        contrast=min(augment.contrast * strength, 0.95),
        blur_sharpen=min(augment.blur_sharpen * strength, 1.0),
        noise=min(augment.noise * strength, 0.5),
        intensity_curve=0.0,
    )


def _random_curve(x: torch.Tensor, points: torch.Tensor, *, apply: torch.Tensor) -> torch.Tensor:
    """Map each selected scan's intensities through its own random piecewise-linear curve (not monotonic).

    x: (B, 1, H, W) in [0, 1]; points: (B, K) the curve's values at K evenly spaced inputs after 0 (black stays
    black: background and the scan's outline are kept); apply: (B,) bool. Tissue contrasts get reordered as
    between MRI sequences (T1, T2, FLAIR), so the class must be read from shape and texture."""
    n, k = points.shape
    knots = torch.cat([torch.zeros(n, 1, device=x.device), 0.1 + 0.9 * points], dim=1)  # (B, K + 1)
    position = x.clamp(0, 1) * k  # where each pixel falls between the knots
    low = position.floor().clamp(max=k - 1).long()
    weight = position - low
    flat = low.view(n, -1)
    left = torch.gather(knots, 1, flat).view_as(x)
    right = torch.gather(knots, 1, flat + 1).view_as(x)
    curved = left + weight * (right - left)
    return torch.where(apply.view(n, 1, 1, 1), curved, x)


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """A separable 5 x 5 Gaussian blur of (B, 1, H, W), reflecting at the edges."""
    taps = torch.exp(-(torch.arange(-2, 3, dtype=x.dtype, device=x.device) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, 5))
    return F.conv2d(x, taps.view(1, 1, 5, 1))


def mixup(images: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., 2018) of a normalised batch (B, C, H, W): each scan blended with another of the batch,
    `lam * x + (1 - lam) * x[partner]`, lam ~ Beta(alpha, alpha) once per batch. Returns (mixed, partner, lam);
    the loss is lam * CE(y) + (1 - lam) * CE(y[partner]). Draws come from `generator` (CPU), as the train preset's.

    It needs the labels, so it runs in the training step, after the train preset; the preview does not show it.
    """
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    partner = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return lam * images + (1 - lam) * images[partner], partner, lam


def train_preset(prep: Preprocessing, augment: AugmentConfig) -> TrainPreset:
    return TrainPreset(prep, augment)


def eval_preset(prep: Preprocessing) -> EvalPreset:
    return EvalPreset(prep)


def shifted_preset(
    prep: Preprocessing, augment: AugmentConfig, strength: float, seed: int, count: int
) -> ShiftedPreset:
    return ShiftedPreset(prep, augment, strength, seed, count)


def display_preset(prep: Preprocessing, augment: AugmentConfig) -> TrainPreset:
    """The train preset without normalisation: uint8 (…, 1, H, W) views to look at (the augmentation preview)."""
    return TrainPreset(prep, augment, normalise=False)
