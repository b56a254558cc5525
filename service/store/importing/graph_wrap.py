"""Wrap an imported graph so it follows a built-in task's ONNX contract
(service/runtime/kernels.py).

Image classifiers: the user's graph (float NCHW or NHWC input, logits or probabilities) is put
behind in-graph preprocessing, as the built-in image models are exported:

    image uint8 [batch, S, S, C] -> Cast float -> * scale -> (x - mean) / std
        -> Transpose to NCHW (NCHW models) -> Cast to the model's float type (if not float32)
        -> the user's graph (every name prefixed "model/")
        -> Cast float32 (if needed) -> Softmax over classes (unless softmax=false) -> probabilities

Other tasks only rename inputs/outputs to the contract's names (Identity bridges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.core import datatypes
from service.store.importing.graph_inspect import (
    UNKNOWN_DIM,
    ImportRefused,
    default_opset,
    real_inputs,
)
from service.store.specs import TensorSpec

PREFIX = "model/"
"""Prefix of every name of the user's graph inside a wrapped graph (no clashes with ours)."""
IMAGE_KEYS = ("size", "layout", "scale", "mean", "std", "softmax", "resize", "channels", "invert")
FLOATS = tuple(d for d in datatypes.DATATYPES if datatypes.numpy_of(d).kind == "f")


@dataclass
class ImagePlan:
    """How pixels become the user's model input, resolved from the graph and --preprocess."""

    size: int
    channels: int
    layout: str
    """The user's graph layout: "nchw" or "nhwc" (the served input is always NHWC uint8)."""
    scale: float
    mean: list[float]
    std: list[float]
    softmax: bool
    resize: int
    invert: bool
    """Grayscale only: invert mostly light images (the /v1 digit convention)."""

    def preprocessing(self) -> dict[str, Any]:
        """The spec's preprocessing entry (the keys /v1 classify and V2 read, and the rest)."""
        return {
            "layout": "NHWC",
            "dtype": "uint8",
            "image_size": [self.size, self.size],
            "channels": self.channels,
            "resize": self.resize,
            "crop": self.size,
            "model_layout": self.layout.upper(),
            "scale": self.scale,
            "mean": self.mean,
            "std": self.std,
            "softmax": self.softmax,
            "normalisation": "in graph: (x * scale - mean) / std"
            + (", then NCHW" if self.layout == "nchw" else ""),
            **({"invert_light_background": self.invert} if self.channels == 1 else {}),
        }


def _number(options: dict[str, str], key: str, default: float) -> float:
    if key not in options:
        return default
    try:
        value = float(options[key])
    except ValueError:
        raise ImportRefused(f"--preprocess {key}={options[key]!r} is not a number") from None
    if not math.isfinite(value):
        raise ImportRefused(f"--preprocess {key}={options[key]!r} must be finite")
    return value


def integer(options: dict[str, str], key: str, low: int, high: int) -> int | None:
    if key not in options:
        return None
    text = options[key]
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise ImportRefused(f"--preprocess {key}={text!r}: expected an integer {low}..{high}")
    return int(text)


def _floats(options: dict[str, str], key: str, channels: int, default: float) -> list[float]:
    if key not in options:
        return [default] * channels
    try:
        values = [float(v) for v in options[key].split(",")]
    except ValueError:
        raise ImportRefused(
            f"--preprocess {key}={options[key]!r}: expected {channels} comma-separated numbers"
        ) from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels or not all(math.isfinite(v) for v in values):
        raise ImportRefused(
            f"--preprocess {key}={options[key]!r}: expected 1 or {channels} finite numbers "
            f"(one per channel)"
        )
    return values


def flag(options: dict[str, str], key: str, default: bool) -> bool:
    text = options.get(key)
    if text is None:
        return default
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ImportRefused(f"--preprocess {key}={text!r}: expected true or false")


def plan_image(image: TensorSpec, options: dict[str, str], softmax_default: bool) -> ImagePlan:
    """Resolve layout, size and normalisation from the graph's input and --preprocess."""
    unknown = sorted(set(options) - set(IMAGE_KEYS))
    if unknown:
        raise ImportRefused(
            f"unknown --preprocess key(s) {', '.join(unknown)} for image-classification; "
            f"known: {', '.join(IMAGE_KEYS)}"
        )
    shape = image.shape
    if len(shape) != 4 or image.datatype not in FLOATS:
        raise ImportRefused(
            f"image-classification needs one float image input, [N, C, H, W] or [N, H, W, C]; "
            f"input {image.name} is {image.datatype} {shape}"
        )
    layout = options.get("layout", "").lower() or None
    if layout not in (None, "nchw", "nhwc"):
        raise ImportRefused(f"--preprocess layout={options['layout']!r}: expected nchw or nhwc")
    if layout is None:
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if first == last:
            raise ImportRefused(
                f"cannot tell whether input {image.name} {shape} is NCHW or NHWC; pass "
                "--preprocess layout=nchw or layout=nhwc"
            )
        layout = "nchw" if first else "nhwc"
    c_dim, h, w = (shape[1], shape[2], shape[3]) if layout == "nchw" else (shape[3], *shape[1:3])
    channels = integer(options, "channels", 1, 3) or (c_dim if isinstance(c_dim, int) else None)
    if channels not in (1, 3) or (isinstance(c_dim, int) and c_dim != channels):
        raise ImportRefused(
            f"input {image.name} {shape} ({layout.upper()}) has channel dim {c_dim}; "
            "image-classification takes 3 (RGB) or 1 (grayscale) channels"
            + ("; pass --preprocess channels=3 or 1" if not isinstance(c_dim, int) else "")
        )
    fixed = [d for d in (h, w) if isinstance(d, int)]
    if len(fixed) == 2 and h != w:
        raise ImportRefused(
            f"input {image.name} is {h}x{w}; image-classification serves square images "
            "(resize and centre crop): import it as --task generic"
        )
    size = integer(options, "size", 1, 8192) or (fixed[0] if len(fixed) == 2 else None)
    if size is None:
        raise ImportRefused(
            f"input {image.name} {shape} has a symbolic height or width; pass --preprocess "
            "size=S (the square S x S input the model expects)"
        )
    if any(d != size for d in fixed):
        raise ImportRefused(f"--preprocess size={size} but input {image.name} is fixed at {h}x{w}")
    resize = integer(options, "resize", size, 65536) or round(size * 256 / 224)
    std = _floats(options, "std", channels, 1.0)
    if any(s == 0 for s in std):
        raise ImportRefused(f"--preprocess std={options['std']!r}: a zero std divides by zero")
    return ImagePlan(
        size=size,
        channels=channels,
        layout=layout,
        scale=_number(options, "scale", 1 / 255),
        mean=_floats(options, "mean", channels, 0.0),
        std=std,
        softmax=flag(options, "softmax", softmax_default),
        resize=resize,
        invert=flag(options, "invert", False),
    )


def ends_in_softmax(model: onnx.ModelProto) -> bool:
    """Whether the graph's (first) output is made by a Softmax node (then it is probabilities)."""
    name = model.graph.output[0].name
    return any(n.op_type == "Softmax" and name in n.output for n in model.graph.node)


def preprocess_numpy(images: np.ndarray, plan: ImagePlan, datatype: str) -> np.ndarray:
    """The reference for the in-graph preprocessing: uint8 NHWC -> the user's model input."""
    scaled = images.astype(np.float32) * np.float32(plan.scale)
    x: np.ndarray = (scaled - np.asarray(plan.mean, np.float32)) / np.asarray(plan.std, np.float32)
    if plan.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x.astype(datatypes.numpy_of(datatype)))


def softmax_numpy(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def _value(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def wrap_image_classifier(
    model: onnx.ModelProto,
    plan: ImagePlan,
    image: TensorSpec,
    scores: TensorSpec,
    classes: int,
) -> onnx.ModelProto:
    """The user's classifier behind in-graph preprocessing: image uint8 NHWC -> probabilities."""
    wrapped = onnx.compose.add_prefix(model, PREFIX)
    graph = wrapped.graph
    batch = image.shape[0] if image.shape[0] != UNKNOWN_DIM else "batch"
    source, target = PREFIX + image.name, PREFIX + scores.name
    nchw = plan.layout == "nchw"
    cast_in = image.datatype != "FP32"
    pre = [
        helper.make_node("Cast", ["image"], ["wrap/pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wrap/pixels", "wrap/scale"], ["wrap/scaled"]),
        helper.make_node("Sub", ["wrap/scaled", "wrap/mean"], ["wrap/centred"]),
        helper.make_node(
            "Div", ["wrap/centred", "wrap/std"], ["wrap/normalised" if nchw or cast_in else source]
        ),
    ]
    if nchw:
        out = "wrap/nchw" if cast_in else source
        pre.append(helper.make_node("Transpose", ["wrap/normalised"], [out], perm=[0, 3, 1, 2]))
    if cast_in:
        last = pre[-1].output[0]
        pre.append(helper.make_node("Cast", [last], [source], to=datatypes.onnx_of(image.datatype)))
    post = []
    if scores.datatype != "FP32":
        post.append(helper.make_node("Cast", [target], ["wrap/scores"], to=TensorProto.FLOAT))
        target = "wrap/scores"
    if plan.softmax:
        post.append(helper.make_node("Softmax", [target], ["probabilities"], axis=1))
    else:
        post.append(helper.make_node("Identity", [target], ["probabilities"]))
    nodes = [*pre, *graph.node, *post]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(plan.scale, np.float32), "wrap/scale"),
            numpy_helper.from_array(np.array(plan.mean, np.float32), "wrap/mean"),
            numpy_helper.from_array(np.array(plan.std, np.float32), "wrap/std"),
        ]
    )
    size, channels = plan.size, plan.channels
    del graph.input[:]
    graph.input.append(_value("image", TensorProto.UINT8, [batch, size, size, channels]))
    out_batch = scores.shape[0] if scores.shape[0] != UNKNOWN_DIM else batch
    del graph.output[:]
    graph.output.append(_value("probabilities", TensorProto.FLOAT, [out_batch, classes]))
    ensure_default_opset(wrapped)
    return wrapped


def ensure_default_opset(model: onnx.ModelProto) -> None:
    """Our added nodes need a default-domain opset, and weights outside the inputs IR >= 4."""
    if default_opset(model) is None:
        model.opset_import.append(helper.make_opsetid("", 13))
    model.ir_version = max(model.ir_version, 4)


def bridge_io(
    model: onnx.ModelProto, inputs: dict[str, str], outputs: dict[str, str]
) -> onnx.ModelProto:
    """A copy whose inputs/outputs are renamed (old -> new; others keep their names), through
    Identity nodes so that names inside subgraphs need no rewriting."""
    renamed = onnx.compose.add_prefix(model, PREFIX)
    graph = renamed.graph

    def outside(value: onnx.ValueInfoProto, names: dict[str, str]) -> onnx.ValueInfoProto:
        """The value under its name outside the wrapper (prefix dropped, renamed if asked)."""
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        original = value.name[len(PREFIX) :]
        copy.name = names.get(original, original)
        return copy

    new_inputs = [(value.name, outside(value, inputs)) for value in real_inputs(graph)]
    new_outputs = [(value.name, outside(value, outputs)) for value in graph.output]
    nodes = [
        *(helper.make_node("Identity", [new.name], [inner]) for inner, new in new_inputs),
        *graph.node,
        *(helper.make_node("Identity", [inner], [new.name]) for inner, new in new_outputs),
    ]
    del graph.node[:], graph.input[:], graph.output[:]
    graph.node.extend(nodes)
    graph.input.extend(new for _, new in new_inputs)
    graph.output.extend(new for _, new in new_outputs)
    ensure_default_opset(renamed)
    return renamed
