"""ONNX export and verification: checker, symbolic dims, torch vs onnxruntime parity."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.base import GraphExport

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_graph(graph: GraphExport, path: Path) -> Path:
    """Export with the TorchScript exporter (dynamo freezes LSTM sequence lengths)."""
    module = graph.module.eval()
    example = tuple(torch.from_numpy(array) for array in graph.parity_cases[0][1])
    dynamic_axes: dict[str, dict[int, str]] = {}
    for decl in graph.inputs + graph.outputs:
        axes = {i: dim for i, dim in enumerate(decl.shape) if isinstance(dim, str)}
        if axes:
            dynamic_axes[decl.name] = axes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the dynamo deprecation notice
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=[d.name for d in graph.inputs],
            output_names=[d.name for d in graph.outputs],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


def check_graph(graph: GraphExport, path: Path) -> dict[str, Any]:
    """Full onnx.checker pass, and every declared symbolic dim must be symbolic in the file."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    declared = {d.name: d for d in graph.inputs + graph.outputs}
    values = list(model.graph.input) + list(model.graph.output)
    found = {v.name for v in values}
    missing = set(declared) - found
    if missing:
        raise AssertionError(f"{path.name}: graph lacks declared tensors {sorted(missing)}")
    for value in values:
        decl = declared.get(value.name)
        if decl is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(decl.shape):
            raise AssertionError(
                f"{path.name}:{value.name}: rank {len(dims)}, declared {decl.shape}"
            )
        for axis, (dim, want) in enumerate(zip(dims, decl.shape)):
            if isinstance(want, str) and not dim.dim_param:
                raise AssertionError(
                    f"{path.name}:{value.name} axis {axis} should be symbolic '{want}', "
                    f"but the exporter froze it to {dim.dim_value}"
                )
            if isinstance(want, int) and dim.dim_value != want:
                raise AssertionError(
                    f"{path.name}:{value.name} axis {axis} is {dim.dim_value}, declared {want}"
                )
    return {"opset": OPSET, "ir_version": model.ir_version}


def check_parity(graph: GraphExport, path: Path, workdir: Path) -> dict[str, Any]:
    """Compare torch with onnxruntime on every parity case; ORT runs in a fresh process."""
    module = graph.module.eval()
    arrays: dict[str, np.ndarray] = {}
    names = [d.name for d in graph.inputs]
    out_names = [d.name for d in graph.outputs]
    shapes = set()
    for case_index, (_label, case) in enumerate(graph.parity_cases):
        with torch.no_grad():
            outputs = module(*(torch.from_numpy(a) for a in case))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        for name, array in zip(names, case):
            arrays[f"{case_index}/in/{name}"] = array
        for name, tensor in zip(out_names, outputs):
            arrays[f"{case_index}/out/{name}"] = tensor.numpy()
        shapes.add(tuple(tuple(a.shape) for a in case))
    if len(shapes) < 3:
        raise AssertionError(
            f"{path.name}: parity needs >= 3 distinct input shapes, got {len(shapes)}"
        )
    cases_file = workdir / f"{path.stem}.parity.npz"
    np.savez(cases_file, **arrays)  # type: ignore[arg-type]  # numpy stubs vs **kwargs
    result = subprocess.run(
        [sys.executable, "-m", "export.parity", str(path), str(cases_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    cases_file.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"parity subprocess failed for {path.name}:\n{result.stderr}")
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    worst = max(diffs.values())
    report = {
        "max_abs_diff": worst,
        "tolerance": PARITY_TOLERANCE,
        "cases": [
            {"label": label, "shapes": [list(a.shape) for a in case], "max_abs_diff": diffs[str(i)]}
            for i, (label, case) in enumerate(graph.parity_cases)
        ],
    }
    if worst > PARITY_TOLERANCE:
        raise AssertionError(f"{path.name}: torch vs onnxruntime max abs diff {worst:.2e} > 1e-4")
    return report
