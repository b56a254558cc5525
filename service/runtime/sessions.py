"""ONNX Runtime sessions, built in one place: providers with fallback, threads, I/O check."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from service.store.specs import GraphSpec, file_sha256

log = logging.getLogger("deepserve.runtime")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def available_providers(device: str) -> list[str]:
    """Execution providers to ask for: CUDA first when wanted and present, CPU always last."""
    present = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in present:
        return [CUDA, CPU]
    if device == "gpu":
        raise RuntimeError(f"device=gpu but onnxruntime offers only {present}")
    return [CPU]


@dataclass
class LoadedGraph:
    session: ort.InferenceSession
    provider: str
    """The provider that actually runs the graph (first of session.get_providers())."""


def load_graph(
    path: Path,
    graph: GraphSpec,
    device: str = "auto",
    intra_op_threads: int = 1,
    spin: bool = False,
) -> LoadedGraph:
    """Check the file against the spec's SHA-256, create a session, check its inputs/outputs.

    `spin`: the intra-op threads spin between the parallel sections of a run instead of sleeping
    (ONNX Runtime's default), and stop spinning when the run ends. For a session that runs
    alone (Kernel.run_solo): imagenet-cnn on 2 threads took 2.7-3.2 ms spinning, 3.5-4.5 ms not,
    5.0-6.3 ms on one thread, here."""
    digest = file_sha256(path)
    if digest != graph.sha256:
        raise RuntimeError(
            f"{path.name}: SHA-256 {digest[:12]}... does not match the stored spec "
            f"({graph.sha256[:12]}...); the file was changed or damaged"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # NOTE: no spinning for sessions that run beside others: with several sessions on few
    # cores, spinning threads steal the CPU.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    session = ort.InferenceSession(str(path), options, providers=available_providers(device))
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    want_in, want_out = [t.name for t in graph.inputs], [t.name for t in graph.outputs]
    if got_in != want_in or got_out != want_out:
        raise RuntimeError(
            f"{path.name}: graph I/O {got_in} -> {got_out} does not match spec "
            f"{want_in} -> {want_out}"
        )
    provider = session.get_providers()[0]
    log.info("loaded %s with %s (%d intra-op threads)", path, provider, intra_op_threads)
    return LoadedGraph(session, provider)
