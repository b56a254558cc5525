"""JPEG draft decoding for imagenet-cnn: decode time and predictions, full decode vs reduced scale.

    python loadtests/jpeg_draft.py [--factors 0,1,1.5,2] [--repeat 15]

The photos are the colour and grey photos scikit-image ships (never used to train or pick
imagenet-cnn), each as a JPEG (quality 90) at its own size and with its shorter side scaled to
600, 1024, 1600, 2400 and 3200 px (a phone photo's size). Every photo goes through the service's own
preprocessing (decode_image + resize_center_crop, as service/tasks/image_classification.py calls
them) once in full and once per draft factor; the model runs in ONNX Runtime. Reported per factor:
decode + resize time (median), how many top-1s and top-5 sets equal the full decode's, and the
largest change of any class's probability. A factor f decodes at the largest DCT scale that keeps
the shorter side >= f x 256 (the model's resize); 0 = full decode.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.processing.vision import decode_image, resize_center_crop  # noqa: E402

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "stereo_motorcycle",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "clock",
    "coins",
)
SIDES = (None, 600, 1024, 1600, 2400, 3200)  # None: the photo's own size
RESIZE, SIZE = 256, 224
MAX_PIXELS = 40_000_000


@dataclass
class Photo:
    name: str
    jpeg: bytes
    size: tuple[int, int]


def photo_set() -> list[Photo]:
    """The held-out JPEGs (deterministic: same bytes on every run of the same Pillow)."""
    import skimage.data

    photos = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
            array = array[0]
        image = Image.fromarray(np.asarray(array)).convert("RGB")
        for side in SIDES:
            scaled = image
            if side is not None:
                scale = side / min(image.size)
                scaled = image.resize(
                    (round(image.width * scale), round(image.height * scale)),
                    Image.Resampling.LANCZOS,
                )
            buffer = io.BytesIO()
            scaled.save(buffer, "JPEG", quality=90)
            photos.append(Photo(f"{name}@{side or 'own'}", buffer.getvalue(), scaled.size))
    return photos


def preprocess(jpeg: bytes, factor: float) -> np.ndarray:
    """The service's preprocessing for imagenet-cnn with jpeg_draft_factor = factor."""
    min_side = math.ceil(factor * RESIZE) if factor > 0 else None
    return resize_center_crop(decode_image(jpeg, MAX_PIXELS, min_side), RESIZE, SIZE)


def classify(session, pixels: list[np.ndarray]) -> np.ndarray:
    (probabilities,) = session.run(["probabilities"], {"image": np.stack(pixels)})
    return probabilities


def top5(row: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-row, kind="stable")[:5]]


def margin(row: np.ndarray) -> float:
    first, second = np.sort(row)[-2:][::-1]
    return float(first - second)


def compare(session, photos: list[Photo], factor: float, repeat: int) -> dict[str, object]:
    """One factor against the full decode: agreement, probability change, decode time."""
    full = classify(session, [preprocess(p.jpeg, 0) for p in photos])
    drafted = classify(session, [preprocess(p.jpeg, factor) for p in photos])
    same_top1 = sum(top5(a)[0] == top5(b)[0] for a, b in zip(full, drafted))
    same_top5 = sum(set(top5(a)) == set(top5(b)) for a, b in zip(full, drafted))
    times = []
    for photo in photos:
        runs = []
        for _ in range(repeat):
            began = time.perf_counter()
            preprocess(photo.jpeg, factor)
            runs.append(time.perf_counter() - began)
        times.append(statistics.median(runs))
    changed = [
        f"{p.name} (full-decode margin top-1 - top-2: {margin(a):.3f})"
        for p, a, b in zip(photos, full, drafted)
        if top5(a)[0] != top5(b)[0]
    ]
    return {
        "factor": factor,
        "photos": len(photos),
        "same_top1": same_top1,
        "same_top5_set": same_top5,
        "top1_changed": changed,
        "max_probability_change": round(float(np.abs(full - drafted).max()), 4),
        "decode_ms_median": round(1000 * statistics.median(times), 2),
        "decode_ms_total": round(1000 * sum(times), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", default="0,1,1.5,2")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "jpeg_draft.json")
    args = parser.parse_args()

    import onnxruntime as ort

    from service.core.settings import get_settings
    from service.store.specs import latest_specs

    get_settings().apply_store()
    spec = latest_specs()["imagenet-cnn"]
    session = ort.InferenceSession(
        str(spec.graph_path("model")), providers=["CPUExecutionProvider"]
    )
    photos = photo_set()
    print(
        f"{len(photos)} JPEGs, {min(min(p.size) for p in photos)}-"
        f"{max(min(p.size) for p in photos)} px shorter side"
    )
    rows = []
    print(
        f"{'factor':>6} {'top-1 same':>11} {'top-5 same':>11} {'max dP':>7} "
        f"{'decode ms (median)':>19} {'all photos ms':>14}"
    )
    for factor in [float(f) for f in args.factors.split(",")]:
        row = compare(session, photos, factor, args.repeat)
        rows.append(row)
        print(
            f"{factor:>6g} {row['same_top1']:>6}/{len(photos):<4} {row['same_top5_set']:>6}/"
            f"{len(photos):<4} {row['max_probability_change']:>7} "
            f"{row['decode_ms_median']:>19} {row['decode_ms_total']:>14}"
        )
        if row["top1_changed"]:
            print(f"       top-1 changed: {', '.join(row['top1_changed'])}")  # type: ignore[arg-type]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
