"""The one datatype table: V2 (Open Inference Protocol) datatype <-> numpy dtype <-> ONNX type.

Every module that names a tensor's datatype converts through here. BYTES tensors are numpy object
arrays (of `bytes`) and ONNX STRING tensors. BF16 is a V2 datatype too, but numpy has no bfloat16,
so it is not served.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from onnx import TensorProto, helper

ONNX_OF: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": TensorProto.BOOL,
        "UINT8": TensorProto.UINT8,
        "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32,
        "UINT64": TensorProto.UINT64,
        "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "FP16": TensorProto.FLOAT16,
        "FP32": TensorProto.FLOAT,
        "FP64": TensorProto.DOUBLE,
        "BYTES": TensorProto.STRING,
    }
)
"""V2 datatype -> ONNX TensorProto element type, for every datatype deepserve serves."""

DATATYPES: tuple[str, ...] = tuple(ONNX_OF)
"""Every V2 datatype deepserve serves, in the protocol's order."""

NUMPY_OF: Mapping[str, np.dtype[Any]] = MappingProxyType(
    {name: np.dtype(helper.tensor_dtype_to_np_dtype(elem)) for name, elem in ONNX_OF.items()}
)
"""V2 datatype -> numpy dtype (BYTES: object)."""

_BY_DTYPE: Mapping[np.dtype[Any], str] = MappingProxyType({d: n for n, d in NUMPY_OF.items()})
_BY_ONNX: Mapping[int, str] = MappingProxyType({e: n for n, e in ONNX_OF.items()})


def numpy_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype; KeyError when it is not one."""
    return NUMPY_OF[datatype]


def onnx_of(datatype: str) -> int:
    """The ONNX element type of a V2 datatype; KeyError when it is not one."""
    return ONNX_OF[datatype]


def datatype_of(dtype: npt.DTypeLike) -> str:
    """The V2 datatype of a numpy dtype (object: BYTES); KeyError when it has none."""
    return _BY_DTYPE[np.dtype(dtype)]


def datatype_of_onnx(elem_type: int) -> str:
    """The V2 datatype of an ONNX element type; KeyError when it has none."""
    return _BY_ONNX[elem_type]
