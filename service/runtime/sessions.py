"""ONNX Runtime sessions, built in one place: providers with fallback, threads, I/O check, and
IO binding for the CUDA provider (LoadedGraph.run)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core import datatypes
from service.store.specs import GraphSpec, TensorSpec, file_sha256

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


DEVICE_OF = {CUDA: "cuda", CPU: "cpu"}
"""OrtValue device type of a provider's memory."""

OUTPUT_BUFFERS = 16
"""Preallocated output buffers kept per thread and graph (one per output and batch size, the
least recently used dropped first)."""


@dataclass
class LoadedGraph:
    session: ort.InferenceSession
    provider: str
    """The provider that actually runs the graph (first of session.get_providers())."""
    graph: GraphSpec | None = None
    io_binding: bool = False
    """Run through IO binding (see run): on by default for CUDA (io_binding setting)."""
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """session.run's signature and answer (numpy outputs on the host). With IO binding,
        each input is copied to the provider's device once, and an output whose shape follows
        from the batch size (its first dim the first input's symbolic batch dim, the others
        fixed in the spec) goes into a buffer preallocated on the device per batch size and
        thread, so a run allocates no output memory; ONNX Runtime allocates the others on the
        device (text outputs on the host: CUDA has no string tensors). Either way the outputs
        come back to the host in one copy."""
        if not self.io_binding:
            return self.session.run(names, dict(feeds))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        batch = self._batch_of(feeds)
        device = DEVICE_OF.get(self.provider, "cpu")
        outputs = {t.name: t for t in self.graph.outputs} if self.graph else {}
        for name in names or [o.name for o in self.session.get_outputs()]:
            spec = outputs.get(name)
            buffer = self._output_buffer(spec, batch, device) if spec and batch else None
            if buffer is not None:
                binding.bind_ortvalue_output(name, buffer)
            else:
                text = spec is not None and spec.datatype == "BYTES"
                binding.bind_output(name, "cpu" if text else device)
        self.session.run_with_iobinding(binding)
        result: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return result

    def _batch_of(self, feeds: Mapping[str, np.ndarray]) -> tuple[str, int] | None:
        """(the batch dim's name, its size): the first input's first dim, when the spec names
        it symbolically and the feed has it."""
        if self.graph is None or not self.graph.inputs:
            return None
        first = self.graph.inputs[0]
        value = feeds.get(first.name)
        if not first.shape or not isinstance(first.shape[0], str) or value is None:
            return None
        if np.ndim(value) == 0:
            return None
        return first.shape[0], len(value)

    def _output_buffer(
        self, spec: TensorSpec, batch: tuple[str, int], device: str
    ) -> ort.OrtValue | None:
        """The preallocated buffer for `spec` at this batch size, or None when its shape does
        not follow from the batch (scalars, another first dim, symbolic dims after it, text)."""
        dim, size = batch
        shape = spec.shape
        if not shape or shape[0] != dim or not all(isinstance(d, int) for d in shape[1:]):
            return None
        if spec.datatype == "BYTES":
            return None
        buffers: OrderedDict[tuple[str, int], ort.OrtValue] | None = getattr(
            self._local, "buffers", None
        )
        if buffers is None:
            buffers = self._local.buffers = OrderedDict()
        key = (spec.name, size)
        buffer = buffers.get(key)
        if buffer is None:
            dims = [size, *(int(d) for d in shape[1:])]
            dtype = datatypes.numpy_of(spec.datatype)
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(dims, dtype, device, 0)
            buffers[key] = buffer
            while len(buffers) > OUTPUT_BUFFERS:
                buffers.popitem(last=False)
        else:
            buffers.move_to_end(key)
        return buffer


def wants_io_binding(io_binding: str, provider: str) -> bool:
    """The io_binding setting ("auto": on for CUDA, where it saves a copy and an allocation per
    run; "on"; "off") for a graph running on `provider`."""
    if io_binding == "auto":
        return provider == CUDA
    return io_binding == "on"


def load_graph(
    path: Path,
    graph: GraphSpec,
    device: str = "auto",
    intra_op_threads: int = 1,
    spin: bool = False,
    io_binding: str = "auto",
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
    bound = wants_io_binding(io_binding, provider)
    log.info(
        "loaded %s with %s (%d intra-op threads%s)",
        path,
        provider,
        intra_op_threads,
        ", IO binding" if bound else "",
    )
    return LoadedGraph(session, provider, graph, bound)
