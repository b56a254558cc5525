"""A baseline, not deepserve: what a user would write to serve imagenet-cnn without a serving
system. One Starlette app in one uvicorn process, ONNX Runtime with its default threads, no
batching: POST a JPEG (raw body, any path) -> decode, shorter side to 256, centre crop 224, run,
top-5 as JSON. `make bench` measures deepserve's ratio to it with the same payloads and load
generator. Run: python loadtests/plain_server.py --port 8001 [--model imagenet-cnn]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.store.specs import latest_specs  # where the model file is


def build_app(model: str) -> Starlette:
    spec = latest_specs()[model]
    session = ort.InferenceSession(
        str(spec.graph_path("model")), providers=["CPUExecutionProvider"]
    )
    labels = spec.labels or []

    def predict(data: bytes) -> list[dict]:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        pixels = np.asarray(image.crop((left, top, left + 224, top + 224)))[None]
        (probabilities,) = session.run(["probabilities"], {"image": pixels})
        best = np.argsort(-probabilities[0])[:5]
        return [{"label": labels[i], "score": float(probabilities[0][i])} for i in best]

    async def classify(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": predict(await request.body())})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[Route("/health", health), Route("/{path:path}", classify, methods=["POST"])]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="imagenet-cnn")
    args = parser.parse_args()
    uvicorn.run(build_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")
