"""`make bench`: the service against the in-process limit, measured side by side in one run.

For imagenet-cnn (512 px JPEG posted raw), digits-cnn (PNG) and sentiment-lstm (JSON):
  1. the in-process limit: decode + preprocess + ONNX Runtime in this process, no HTTP, best of a
     few caller/micro-batch configurations;
  2. the served API at concurrency 1, 8 and 32, for the local placement, the local placement with
     batching off, and the remote placement (BentoML runner services), over REST /v1 (wrk); the
     local placement also over V2 REST with binary tensors (wrk), the gRPC task service and V2
     gRPC ModelInfer (loadtests/grpc_load.py).
Prints one table with ratios to the limit, writes JSON and a latency-vs-throughput PNG.
Not a test: numbers depend on the machine. Loopback only; every load run is bounded in time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.server import Server, start_server, stop_server  # noqa: E402
from service.processing.text import encode, tokenize  # noqa: E402
from service.processing.vision import decode_image, digit_pixels, resize_center_crop  # noqa: E402
from service.registry import latest_specs  # noqa: E402
from service.settings import get_settings  # noqa: E402

get_settings().apply_store()

WRK_SCRIPT = """
wrk.method = "POST"
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.body = f:read("*all")
f:close()
for name, value in string.gmatch(os.getenv("HEADERS"), "([^:\\n]+): ([^\\n]+)") do
  wrk.headers[name] = value
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON{\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,\\"p50\\":%d,\\"p99\\":%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Workload:
    model: str
    path: str
    content_type: str
    body: bytes
    prepare: Callable[[], Any]
    """decode + preprocess one request in-process (what the server does before the model)."""
    feed: Callable[[list[Any]], dict[str, np.ndarray]]
    v2_inputs: Callable[[], dict[str, np.ndarray]]
    """The same request as Open Inference Protocol tensors (what a V2 client sends)."""
    task_rpc: Callable[[], tuple[str, bytes]]
    """The same request for deepserve.v1.Inference: (method path, serialized message)."""


@dataclass
class Row:
    model: str
    mode: str
    protocol: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    avg_batch: float | None
    ratio: float


def workloads() -> list[Workload]:
    import skimage.data
    from PIL import Image

    specs = latest_specs()
    photo = Image.fromarray(skimage.data.astronaut())  # 512 x 512
    jpeg = io.BytesIO()
    photo.save(jpeg, format="JPEG", quality=90)
    digit = specs["digits-cnn"].heldout()["image"][0]
    png = io.BytesIO()
    Image.fromarray(digit.squeeze()).save(png, format="PNG")
    review = "An intelligent, beautifully acted film that never talks down to its audience."
    vocabulary = {w: i for i, w in enumerate(specs["sentiment-lstm"].vocabulary or [])}
    jpeg_bytes, png_bytes = jpeg.getvalue(), png.getvalue()

    def text_feed(items: list[list[int]]) -> dict[str, np.ndarray]:
        from service.processing.text import collate_padded

        tokens, lengths = collate_padded(items)
        return {"tokens": tokens, "lengths": lengths}

    imagenet = lambda: resize_center_crop(decode_image(jpeg_bytes, 10**8), 256, 224)  # noqa: E731
    digits = lambda: digit_pixels(decode_image(png_bytes, 10**8), 28)  # noqa: E731
    return [
        Workload(
            "imagenet-cnn",
            "/v1/classify?model=imagenet-cnn",
            "image/jpeg",
            jpeg_bytes,
            imagenet,
            lambda items: {"image": np.stack(items)},
            lambda: {"image": imagenet()[None]},
            lambda: task_call("Classify", image=jpeg_bytes, model="imagenet-cnn"),
        ),
        Workload(
            "digits-cnn",
            "/v1/classify?model=digits-cnn",
            "image/png",
            png_bytes,
            digits,
            lambda items: {"image": np.stack(items)},
            lambda: {"image": digits()[None]},
            lambda: task_call("Classify", image=png_bytes, model="digits-cnn"),
        ),
        Workload(
            "sentiment-lstm",
            "/v1/sentiment",
            "application/json",
            json.dumps({"text": review}).encode(),
            lambda: encode(
                tokenize(json.loads(json.dumps({"text": review}))["text"]), vocabulary, 64
            ),
            text_feed,
            lambda: {"text": np.array([review.encode()], dtype=object)},
            lambda: task_call("Sentiment", texts=[review]),
        ),
    ]


def task_call(method: str, **fields: Any) -> tuple[str, bytes]:
    import service.proto.stubs  # noqa: F401  (generates service.proto.gen first)
    from service.proto.gen import deepserve_pb2 as pb

    message = getattr(pb, f"{method}Request")(**fields)
    return f"/deepserve.v1.Inference/{method}", message.SerializeToString()


def v2_rest_request(inputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """A binary-data V2 infer body (what tritonclient.http sends) and its headers."""
    from service.v2 import codecs

    raws = [codecs.to_raw(array) for array in inputs.values()]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": codecs.datatype_of(array),
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
                for (name, array), raw in zip(inputs.items(), raws)
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + b"".join(raws), headers


def v2_grpc_request(model: str, inputs: dict[str, np.ndarray]) -> tuple[str, bytes]:
    import service.proto.stubs  # noqa: F401  (generates service.proto.gen first)
    from service.proto.gen import inference_pb2 as pb
    from service.v2 import codecs

    message = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        message.inputs.add(name=name, datatype=codecs.datatype_of(array), shape=list(array.shape))
        message.raw_input_contents.append(codecs.to_raw(array))
    return "/inference.GRPCInferenceService/ModelInfer", message.SerializeToString()


def measure_rate(
    session: Any, work: Workload, callers: int, micro_batch: int, seconds: float
) -> float:
    """Requests/s of `callers` threads each looping decode + preprocess + ORT for `seconds`."""
    output = session.get_outputs()[-1].name
    session.run([output], work.feed([work.prepare()]))  # warm-up
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            items = [work.prepare() for _ in range(micro_batch)]
            session.run([output], work.feed(items))
            counts[index] += micro_batch

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def in_process_limit(work: Workload, seconds: float) -> tuple[float, str]:
    """Best requests/s of decode + preprocess + ORT over a few thread/micro-batch configurations."""
    import onnxruntime as ort

    spec = latest_specs()[work.model]
    best, best_config = 0.0, ""
    for callers, micro_batch in ((1, 1), (2, 1), (2, 4)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2 if callers == 1 else 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(spec.graph_path()), options, providers=["CPUExecutionProvider"]
        )
        rate = measure_rate(session, work, callers, micro_batch, seconds)
        if rate > best:
            best, best_config = rate, f"{callers} caller(s) x micro-batch {micro_batch}"
    return best, best_config


def in_process_latency_ms(work: Workload, seconds: float, decode: bool = True) -> float:
    """p50 of one request alone in-process (decode + preprocess + ORT batch 1), with the
    server's session options (1 intra-op thread): the floor under the service's c=1 latency."""
    import onnxruntime as ort

    spec = latest_specs()[work.model]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(spec.graph_path()), options, providers=["CPUExecutionProvider"]
    )
    output = session.get_outputs()[-1].name
    prepared = work.prepare()
    session.run([output], work.feed([prepared]))
    samples = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(samples) < 20:
        started = time.perf_counter()
        session.run([output], work.feed([work.prepare() if decode else prepared]))
        samples.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(samples, 50))


def run_wrk(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, tmp: Path
) -> dict[str, float]:
    body_file = tmp / "body.bin"
    body_file.write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    env = dict(
        os.environ,
        BODY_FILE=str(body_file),
        HEADERS="\n".join(f"{k}: {v}" for k, v in headers.items()),
    )
    result = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(concurrency, 2)),
            "-c",
            str(concurrency),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=seconds + 30,
    )
    match = re.search(r"JSON(\{.*\})", result.stdout)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")
    data = json.loads(match.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": data["p50"] / 1000,
        "p99_ms": data["p99"] / 1000,
        "errors": data["errors"] + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def run_grpc(
    target: str, method: str, body: bytes, concurrency: int, seconds: float, tmp: Path
) -> dict[str, float]:
    """loadtests/grpc_load.py in its own process (like wrk, it is not the server's interpreter)."""
    body_file = tmp / "grpc.bin"
    body_file.write_bytes(body)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.grpc_load",
            "--target",
            target,
            "--method",
            method,
            "--body",
            str(body_file),
            "-c",
            str(concurrency),
            "-d",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=seconds + 60,
    )
    match = re.search(r"JSON(\{.*\})", result.stdout)
    if not match:
        raise RuntimeError(f"grpc_load printed no summary:\n{result.stdout}\n{result.stderr}")
    data = json.loads(match.group(1))
    return {
        "rps": data["requests"] / data["duration_s"],
        "p50_ms": data["p50_ms"],
        "p99_ms": data["p99_ms"],
        "errors": data["errors"],
    }


def batch_counts(url: str, model: str) -> tuple[int, int]:
    info = requests.get(f"{url}/v1/models/{model}", timeout=10).json()["batching"]
    return int(info.get("batches", 0)), int(info.get("samples", 0))


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4))
    for ax, model in zip(np.atleast_1d(axes), models):
        for mode, protocol in sorted({(r.mode, r.protocol) for r in rows}):
            points = [
                r for r in rows if r.model == model and r.mode == mode and r.protocol == protocol
            ]
            label = mode if protocol == "rest" else f"{mode} {protocol}"
            ax.plot([r.rps for r in points], [r.p99_ms for r in points], marker="o", label=label)
            for r in points:
                ax.annotate(f"c={r.concurrency}", (r.rps, r.p99_ms), fontsize=7)
        ax.set_title(model)
        ax.set_xlabel("requests/s")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per load point (default 6)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--modes", default="local,local-nobatch,remote")
    parser.add_argument(
        "--protocols",
        default="rest,v2-rest,grpc,v2-grpc",
        help="rest = /v1 task API (wrk), v2-rest = /v2 binary tensors (wrk), "
        "grpc = deepserve.v1.Inference, v2-grpc = ModelInfer (loadtests/grpc_load.py)",
    )
    parser.add_argument(
        "--protocol-modes", default="local", help="modes measured with every protocol"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    works = workloads()
    limits = {}
    for work in works:
        rate, config = in_process_limit(work, args.seconds / 2)
        single = in_process_latency_ms(work, args.seconds / 2)
        ort_only = in_process_latency_ms(work, args.seconds / 4, decode=False)
        limits[work.model] = {
            "rps": rate,
            "config": config,
            "batch1_p50_ms": single,
            "ort_batch1_p50_ms": ort_only,
        }
        print(
            f"in-process limit {work.model}: {rate:.1f} req/s ({config}); "
            f"one request alone p50 {single:.2f} ms",
            flush=True,
        )
    env_of = {
        "local": {"DEEPSERVE_PLACEMENT": "local"},
        "local-nobatch": {"DEEPSERVE_PLACEMENT": "local", "DEEPSERVE_BATCHING": "false"},
        "remote": {"DEEPSERVE_PLACEMENT": "remote"},
    }
    models = json.dumps([w.model for w in works])
    protocols = args.protocols.split(",")
    rows: list[Row] = []

    def measure(server: Server, work: Workload, protocol: str, clients: int, seconds: float):
        if protocol == "rest":
            headers = {"Content-Type": work.content_type}
            return run_wrk(server.url + work.path, work.body, headers, clients, seconds, tmp)
        if protocol == "v2-rest":
            body, headers = v2_rest_request(work.v2_inputs())
            url = f"{server.url}/v2/models/{work.model}/infer"
            return run_wrk(url, body, headers, clients, seconds, tmp)
        method, message = (
            work.task_rpc() if protocol == "grpc" else v2_grpc_request(work.model, work.v2_inputs())
        )
        return run_grpc(server.grpc_target, method, message, clients, seconds, tmp)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for mode in args.modes.split(","):
            server = start_server(tmp, {**env_of[mode], "DEEPSERVE_MODELS": models})
            try:
                for work in works:
                    for protocol in protocols if mode in args.protocol_modes else ["rest"]:
                        measure(server, work, protocol, 4, 1.0)  # warm the path
                        for concurrency in levels:
                            before = batch_counts(server.url, work.model)
                            point = measure(server, work, protocol, concurrency, args.seconds)
                            after = batch_counts(server.url, work.model)
                            batches, samples = after[0] - before[0], after[1] - before[1]
                            row = Row(
                                work.model,
                                mode,
                                protocol,
                                concurrency,
                                point["rps"],
                                point["p50_ms"],
                                point["p99_ms"],
                                int(point["errors"]),
                                samples / batches if batches else None,
                                point["rps"] / limits[work.model]["rps"],
                            )
                            rows.append(row)
                            print(
                                f"{mode:<14} {protocol:<8} {work.model:<15} c={concurrency:<3} "
                                f"{row.rps:7.1f} req/s p50 {row.p50_ms:6.1f} ms "
                                f"p99 {row.p99_ms:7.1f} ms x{row.ratio:.2f} of limit",
                                flush=True,
                            )
            finally:
                stop_server(server)
    header = (
        "| model | mode | protocol | clients | req/s | p50 ms | p99 ms | errors | avg batch "
        "| x limit |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for work in works:
        limit = limits[work.model]
        lines.append(
            f"| {work.model} | in-process limit ({limit['config']}) | - | - | {limit['rps']:.1f} "
            "| - | - | - | - | 1.00 |"
        )
        for r in (r for r in rows if r.model == work.model):
            batch = f"{r.avg_batch:.1f}" if r.avg_batch else "-"
            lines.append(
                f"| {r.model} | {r.mode} | {r.protocol} | {r.concurrency} | {r.rps:.1f} | "
                f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {batch} | {r.ratio:.2f} |"
            )
    lines.append("")
    lines.append(
        "| model | mode | protocol | c=1 p50 ms | in-process batch-1 p50 ms | overhead ms |"
    )
    lines.append("|---|---|---|---|---|---|")
    for r in (r for r in rows if r.concurrency == 1):
        # V2 clients send preprocessed tensors: their floor is ONNX Runtime alone, no decode
        key = "ort_batch1_p50_ms" if r.protocol.startswith("v2") else "batch1_p50_ms"
        floor = limits[r.model][key]
        lines.append(
            f"| {r.model} | {r.mode} | {r.protocol} | {r.p50_ms:.2f} | {floor:.2f} | "
            f"{r.p50_ms - floor:.2f} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    (args.out / "bench.md").write_text(table + "\n")
    (args.out / "bench.json").write_text(
        json.dumps({"limits": limits, "rows": [asdict(r) for r in rows]}, indent=2)
    )
    plot(rows, args.out / "latency_vs_throughput.png")
    print(f"\nwrote {args.out}/bench.md, bench.json, latency_vs_throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
