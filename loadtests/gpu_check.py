"""The GPU check (`make gpu-check`): one script, one report, for the first GPU machine at hand.

    python loadtests/gpu_check.py [--models a,b] [--batch-sizes 1,2,4,...] [--seconds 1]
                                  [--wheels DIR] [--out reports/gpu-check] [--no-service]

1. onnxruntime with CUDA: when a GPU is visible (nvidia-smi or /dev/nvidiactl) but onnxruntime
   offers no CUDAExecutionProvider, it installs onnxruntime-gpu 1.31.1 (the CUDA 13 build) from
   a local wheel directory (--wheels, default .whl/; the wheel whole, or in parts named
   `<wheel>.part-*` that are joined in name order, since a part is what one device call carries)
   into a folder of its own and runs again with it first on the path. Without a GPU it runs
   everything on the CPU provider and says so ("CPU fallback").
2. Provider check: a session asked for [CUDA, CPU] must put CUDA first in get_providers() (that
   the provider is available is not enough: a missing CUDA library makes ORT fall back quietly).
3. Per model and graph, throughput against batch size with IO binding off (session.run on numpy
   arrays) and on (inputs copied to the device once, outputs into buffers preallocated per batch
   size, as service/runtime/sessions.py LoadedGraph.run does), on inputs synthesised from the
   stored spec.json, and a check that both answer alike. This part needs only onnxruntime and
   numpy, so it runs where the service's dependencies are not installed.
4. Where they are (bentoml, the service), the service itself under load over gRPC at several
   client counts with GPU batch sizes (DEEPSERVE_DEVICE=gpu, gpu_max_batch_size), with the
   average batch it ran.
The report: <out>/gpu-check.md and gpu-check.json. Exit status 0 when every check passed (on a
CPU machine: the fallback ran and its checks passed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEEL_PREFIX = "onnxruntime_gpu-1.31.1-"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
REEXEC = "DEEPSERVE_GPU_CHECK_REEXEC"
SYMBOLIC_SIZES = {"tokens": 32, "samples": 16_000}
"""Sizes of a spec's symbolic dims other than the batch (32 tokens, 1 s of 16 kHz audio)."""
OTHER_SIZE = 16
NUMPY_OF = {
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BOOL": np.bool_,
}
"""V2 datatype -> numpy (service/core/datatypes.py is the service's table; this script runs
without the service's dependencies)."""


# --- 1. onnxruntime with CUDA --------------------------------------------------------------------


def gpu_visible() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


def find_wheel(wheels: Path, scratch: Path) -> Path | None:
    """The onnxruntime-gpu 1.31.1 wheel in `wheels`: the file itself, or its parts joined into
    `scratch` (the parts `<wheel>.part-*`, in name order)."""
    if not wheels.is_dir():
        return None
    whole = sorted(wheels.glob(f"{WHEEL_PREFIX}*.whl"))
    if whole:
        return whole[0]
    parts = sorted(wheels.glob(f"{WHEEL_PREFIX}*.whl.part-*"))
    if not parts:
        return None
    name = parts[0].name.split(".part-")[0]
    if any(p.name.split(".part-")[0] != name for p in parts):
        raise SystemExit(f"{wheels}: parts of more than one wheel: {[p.name for p in parts]}")
    joined = scratch / name
    with joined.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    return joined


def ensure_cuda_onnxruntime(wheels: Path) -> str:
    """How onnxruntime came to have CUDA: "present", or "no GPU" / "no wheel in DIR" (CPU
    fallback); when a GPU is visible, CUDA is missing and the wheel is there, installs it and
    runs this script again (never returns)."""
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        return "present"
    if not gpu_visible():
        return "no GPU"
    if os.environ.get(REEXEC):
        return f"installed from {wheels}, but onnxruntime still offers no CUDA (CUDA libraries?)"
    target = Path(tempfile.mkdtemp(prefix="ort-gpu-"))
    wheel = find_wheel(wheels, target)
    if wheel is None:
        return f"no {WHEEL_PREFIX}*.whl in {wheels}"
    print(f"installing {wheel.name} into {target}", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target / "site"),
            str(wheel),
        ],
        check=True,
    )
    path = os.pathsep.join(filter(None, [str(target / "site"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, **{REEXEC: str(wheels)})
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def run_mode(visible: bool, cuda: bool, source: str) -> tuple[bool, str | None]:
    """(run on the GPU, why the check fails) from whether a GPU is visible and onnxruntime
    offers CUDA: a GPU that onnxruntime cannot use fails the check (the CPU fallback still runs
    and reports); CUDA offered with no GPU visible runs the CPU fallback."""
    if visible and not cuda:
        return False, f"a GPU is visible but onnxruntime offers no CUDA provider ({source})"
    return visible and cuda, None


# --- 2 and 3. sessions, inputs, throughput ------------------------------------------------------


@dataclass
class Graph:
    model: str
    name: str
    path: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    vocabulary: int


def stored_graphs(store: Path, models: list[str] | None) -> list[Graph]:
    """Each model's newest version in a BentoML model store, read from its spec.json."""
    found = []
    for folder in sorted((store / "models").glob("*/latest")):
        model = folder.parent.name
        if models and model not in models:
            continue
        version = folder.parent / folder.read_text().strip()
        spec = json.loads((version / "spec.json").read_text())
        for name, graph in spec["graphs"].items():
            found.append(
                Graph(
                    model,
                    name,
                    version / graph["file"],
                    graph["inputs"],
                    graph["outputs"],
                    len(spec.get("vocabulary") or []),
                )
            )
    missing = set(models or []) - {g.model for g in found}
    if missing:
        raise SystemExit(f"not in {store}: {', '.join(sorted(missing))} (make models)")
    return found


def synthetic_feed(graph: Graph, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the spec's shapes and datatypes: images of random pixels, token ids from the
    vocabulary, full lengths, small random floats."""
    feed = {}
    for tensor in graph.inputs:
        dims = [
            batch if i == 0 else d if isinstance(d, int) else SYMBOLIC_SIZES.get(d, OTHER_SIZE)
            for i, d in enumerate(tensor["shape"])
        ]
        dtype = NUMPY_OF[tensor["datatype"]]
        if tensor["name"] == "lengths":  # every row full: the longest symbolic dim
            full = max((d for d in feed_dims(graph) if d), default=1)
            feed[tensor["name"]] = np.full(dims, full, dtype)
        elif dtype == np.uint8:
            feed[tensor["name"]] = rng.integers(0, 256, dims, dtype=np.uint8)
        elif np.issubdtype(dtype, np.integer):
            feed[tensor["name"]] = rng.integers(2, max(3, graph.vocabulary), dims).astype(dtype)
        else:
            feed[tensor["name"]] = (0.1 * rng.standard_normal(dims)).astype(dtype)
    return feed


def feed_dims(graph: Graph) -> list[int]:
    return [
        SYMBOLIC_SIZES.get(d, 0) for t in graph.inputs for d in t["shape"][1:] if isinstance(d, str)
    ]


def open_session(path: Path, providers: list[str]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=providers)


def bound_runner(session: Any, graph: Graph, device: str) -> Callable[[dict], list[np.ndarray]]:
    """session.run through IO binding, as service/runtime/sessions.py LoadedGraph.run does it:
    outputs whose dims after the first are fixed go into buffers preallocated per batch size."""
    import onnxruntime as ort

    buffers: dict[tuple[str, int], Any] = {}

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        batch = len(next(iter(feed.values())))
        for output in graph.outputs:
            fixed = all(isinstance(d, int) for d in output["shape"][1:])
            if not fixed or output["datatype"] not in NUMPY_OF:
                binding.bind_output(output["name"], device)
                continue
            key = (output["name"], batch)
            if key not in buffers:
                shape = [batch, *output["shape"][1:]]
                dtype = NUMPY_OF[output["datatype"]]
                buffers[key] = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)
            binding.bind_ortvalue_output(output["name"], buffers[key])
        session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return outputs

    return run


@dataclass
class Point:
    model: str
    graph: str
    batch: int
    io_binding: bool
    runs: int
    items_per_s: float
    p50_ms: float


def time_runs(
    run: Callable[[], Any], seconds: float, min_runs: int = 3
) -> tuple[int, float, float]:
    """(runs, seconds, median seconds per run) of `run` repeated for about `seconds`."""
    for _ in range(2):
        run()  # warm-up: first runs allocate
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        if len(times) >= 100_000:
            break
    return len(times), sum(times), statistics.median(times)


def sweep(
    graph: Graph, provider: str, batches: list[int], seconds: float
) -> tuple[list[Point], str]:
    """Throughput per batch size, IO binding off and on, and whether both answer alike."""
    session = open_session(graph.path, [provider, CPU] if provider != CPU else [CPU])
    device = "cuda" if session.get_providers()[0] == CUDA else "cpu"
    names = [o["name"] for o in graph.outputs]
    bound = bound_runner(session, graph, device)
    rng = np.random.default_rng(0)
    points, agreement = [], "same answers"
    for batch in batches:
        feed = synthetic_feed(graph, batch, rng)
        plain_out = session.run(names, feed)
        for a, b in zip(plain_out, bound(feed)):
            if a.shape != b.shape:
                agreement = f"DIFFERENT at batch {batch}: shapes {a.shape} and {b.shape}"
            elif not np.allclose(a, b, rtol=1e-3, atol=1e-4):
                agreement = f"DIFFERENT at batch {batch}: max |diff| {np.abs(a - b).max():.3g}"
        runners = {
            False: functools.partial(session.run, names, feed),
            True: functools.partial(bound, feed),
        }
        for binding, run in runners.items():
            runs, total, median = time_runs(run, seconds)
            rate = runs * batch / total
            points.append(Point(graph.model, graph.name, batch, binding, runs, rate, median * 1000))
    return points, agreement


# --- 4. the service ---------------------------------------------------------------------------


def service_available() -> str | None:
    """None when the service can be run here, else why not."""
    try:
        import bentoml  # noqa: F401

        sys.path.insert(0, str(ROOT))
        import service.core.settings  # noqa: F401
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def service_under_load(
    models: list[str], gpu: bool, clients: list[int], seconds: float, scratch: Path
) -> list[dict[str, Any]]:
    """The real server (gRPC task API, loadtests/grpc_load.py) at each client count."""
    from loadtests.bench import batch_counts, measure, workloads
    from loadtests.server import running_server

    env = {
        "DEEPSERVE_DEVICE": "gpu" if gpu else "cpu",
        "DEEPSERVE_MODELS": json.dumps(models),
        "DEEPSERVE_GATEWAY_WORKERS": "1",
    }
    rows = []
    with running_server(scratch, env) as server:
        for work in workloads(models):
            for count in clients:
                before = batch_counts(server.url, work.model)
                got = measure(server, work, "grpc", count, seconds, scratch)
                after = batch_counts(server.url, work.model)
                batches = after[0] - before[0]
                rows.append(
                    {
                        "model": work.model,
                        "clients": count,
                        **got,
                        "avg_batch": (after[1] - before[1]) / batches if batches else None,
                    }
                )
                print(f"  service {work.model} x{count}: {got['rps']:.1f} req/s", flush=True)
    return rows


# --- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    machine: str
    onnxruntime: str
    cuda_source: str
    gpu: bool
    provider_check: dict[str, Any]
    points: list[Point] = field(default_factory=list)
    agreement: dict[str, str] = field(default_factory=dict)
    service: list[dict[str, Any]] | str = "not run"
    failures: list[str] = field(default_factory=list)


def markdown(report: Report) -> str:
    mode = "GPU" if report.gpu else "CPU fallback (no GPU: everything on the CPU provider)"
    check = report.provider_check
    lines = [
        "# GPU check",
        "",
        f"- machine: {report.machine}",
        f"- onnxruntime {report.onnxruntime}; CUDA: {report.cuda_source}",
        f"- mode: **{mode}**",
        f"- provider check: asked {check['asked']}, session runs on {check['got']}: "
        f"**{'pass' if check['passed'] else 'FAIL'}**",
        "",
        "## Throughput vs batch size (items/s; IO binding off / on)",
        "",
        "| model | graph | batch | off: items/s | off: ms/batch | on: items/s | on: ms/batch "
        "| on/off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(p.model, p.graph, p.batch, p.io_binding): p for p in report.points}
    for (model, graph, batch, binding), off in keyed.items():
        if binding:
            continue
        on = keyed[(model, graph, batch, True)]
        lines.append(
            f"| {model} | {graph} | {batch} | {off.items_per_s:,.1f} | {off.p50_ms:.2f} | "
            f"{on.items_per_s:,.1f} | {on.p50_ms:.2f} | {on.items_per_s / off.items_per_s:.2f}x |"
        )
    lines += ["", "Answers, IO binding on vs off:", ""]
    lines += [f"- {graph}: {verdict}" for graph, verdict in report.agreement.items()]
    lines += ["", "## The service under load (gRPC task API)", ""]
    if isinstance(report.service, str):
        lines.append(f"Not run: {report.service}")
    else:
        lines += [
            "| model | clients | req/s | p50 ms | p99 ms | errors | avg batch |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report.service:
            batch = f"{row['avg_batch']:.1f}" if row["avg_batch"] else "-"
            lines.append(
                f"| {row['model']} | {row['clients']} | {row['rps']:,.1f} | "
                f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | {batch} |"
            )
    lines += ["", "## Result", ""]
    lines += [f"- FAIL: {f}" for f in report.failures] or ["- every check passed"]
    return "\n".join(lines) + "\n"


def machine() -> str:
    gpu = ""
    if shutil.which("nvidia-smi"):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        gpu = f"; GPU {done.stdout.strip()}" if done.returncode == 0 else ""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}{gpu}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", type=Path, default=Path(os.environ.get("BENTOML_HOME", ROOT / "model_store"))
    )
    parser.add_argument(
        "--models", default="", help="comma-separated (default: every stored model)"
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--seconds", type=float, default=1.0, help="per batch size and mode")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu-check")
    parser.add_argument("--no-service", action="store_true", help="skip the service under load")
    parser.add_argument("--service-models", default="imagenet-cnn,digits-cnn")
    parser.add_argument("--service-clients", default="1,32,128")
    parser.add_argument("--service-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    source = ensure_cuda_onnxruntime(args.wheels)
    import onnxruntime as ort

    gpu, problem = run_mode(gpu_visible(), CUDA in ort.get_available_providers(), source)
    graphs = stored_graphs(args.store, [m for m in args.models.split(",") if m] or None)
    provider = CUDA if gpu else CPU
    asked = [CUDA, CPU] if gpu else [CPU]
    got = open_session(graphs[0].path, asked).get_providers()
    check = {"asked": asked, "got": got, "passed": got[0] == provider}
    report = Report(machine(), ort.__version__, source, gpu, check)
    if problem:
        report.failures.append(problem)
    if not check["passed"]:
        report.failures.append(f"provider check: {provider} asked, {got[0]} runs the session")
    print(f"{'GPU' if gpu else 'CPU fallback'}: {ort.__version__}, CUDA {source}", flush=True)

    batches = [int(b) for b in args.batch_sizes.split(",")]
    for graph in graphs:
        label = f"{graph.model}/{graph.name}"
        try:
            points, agreement = sweep(graph, provider, batches, args.seconds)
        except Exception as error:  # one graph failing leaves the others and the report
            report.agreement[label] = f"FAILED: {type(error).__name__}: {error}"
            report.failures.append(f"{label}: {type(error).__name__}: {error}")
            continue
        report.points += points
        report.agreement[label] = agreement
        if agreement != "same answers":
            report.failures.append(f"{label}: IO binding answers differently ({agreement})")
        best = max(points, key=lambda p: p.items_per_s)
        print(f"  {label}: best {best.items_per_s:,.0f} items/s at batch {best.batch}", flush=True)

    why_not = "--no-service" if args.no_service else service_available()
    if why_not is None:
        with tempfile.TemporaryDirectory() as scratch:
            try:
                report.service = service_under_load(
                    args.service_models.split(","),
                    gpu,
                    [int(c) for c in args.service_clients.split(",")],
                    args.service_seconds,
                    Path(scratch),
                )
            except Exception as error:
                report.service = f"failed: {type(error).__name__}: {error}"
                report.failures.append(f"service under load: {error}")
    else:
        report.service = f"the service's dependencies are not installed here ({why_not})"

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.md").write_text(markdown(report))
    (args.out / "gpu-check.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    print(f"report: {args.out / 'gpu-check.md'}")
    for failure in report.failures:
        print(f"FAIL: {failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
