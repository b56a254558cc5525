"""Run saved parity cases through onnxruntime in a fresh process (no torch imported).

Usage: python -m export.parity MODEL.onnx CASES.npz  -> prints {"case": max_abs_diff} as JSON.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np
import onnxruntime as ort


def main(model_path: str, cases_path: str) -> None:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    cases: dict[str, dict[str, dict[str, np.ndarray]]] = defaultdict(lambda: {"in": {}, "out": {}})
    with np.load(cases_path, allow_pickle=False) as saved:
        for key in saved.files:
            case, kind, name = key.split("/", 2)
            cases[case][kind][name] = saved[key]
    diffs = {}
    for case, tensors in cases.items():
        names = list(tensors["out"])
        got = session.run(names, tensors["in"])
        worst = 0.0
        for name, actual in zip(names, got):
            expected = tensors["out"][name]
            if actual.shape != expected.shape:
                raise SystemExit(
                    f"case {case} {name}: shape {actual.shape} != torch {expected.shape}"
                )
            if actual.size:
                diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()
                worst = max(worst, float(diff))
        diffs[case] = worst
    print(json.dumps(diffs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
