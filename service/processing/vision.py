"""Image preprocessing shared by export and serving (PIL + numpy, no torch)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """Shorter side to `resize` (bilinear), centre crop `crop` x `crop`: uint8 HWC RGB."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resize / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    width, height = image.size
    left, top = (width - crop) // 2, (height - crop) // 2
    return np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
