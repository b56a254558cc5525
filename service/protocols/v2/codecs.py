"""Open Inference Protocol tensors <-> numpy: datatypes, JSON data, raw bytes (binary extension).

BYTES tensors are numpy object arrays of `bytes`; on the wire (raw gRPC contents and the REST
binary extension) each element is a 4-byte little-endian length followed by its bytes, as Triton
and tritonclient write them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core import datatypes
from service.core.errors import InvalidInput, PayloadTooLarge
from service.core.settings import Settings

_LENGTH = struct.Struct("<I")
BOOLS = frozenset({bool, np.bool_})
_MAX_DIMS = 64  # numpy's limit on ndarray dimensions
# NOTE: numpy refuses a shape whose non-zero dimensions multiply past this, even with a zero dim.
_MAX_ELEMENTS = np.iinfo(np.intp).max // 16


@dataclass(frozen=True)
class TensorLimits:
    """Bounds on the tensors a request may declare, checked against the declared shape before
    any element is decoded. Raw numeric data costs nothing to decode (numpy views the bytes) and
    is bounded by the body size; JSON data and BYTES elements are decoded one by one in Python,
    on the event loop, so their counts are bounded."""

    json_elements: int = 1 << 20
    """Most elements in one tensor sent as JSON data (or gRPC typed contents)."""
    bytes_elements: int = 1 << 16
    """Most elements in one BYTES tensor."""

    @classmethod
    def of(cls, settings: Settings) -> TensorLimits:
        return cls(settings.max_json_elements, settings.max_bytes_elements)

    def check(self, name: str, datatype: str, dims: list[int], encoding: str) -> int:
        count = element_count(dims)
        if datatype == "BYTES" and count > self.bytes_elements:
            raise PayloadTooLarge(
                f"input {name}: shape {dims} has {count} BYTES elements; the limit is "
                f"{self.bytes_elements} (setting max_bytes_elements)"
            )
        if encoding == "json" and count > self.json_elements:
            raise PayloadTooLarge(
                f"input {name}: shape {dims} has {count} elements sent as JSON data; the limit is "
                f"{self.json_elements} (setting max_json_elements): send larger tensors as "
                "binary data"
            )
        return count

    def check_request(self, declared: list[tuple[Any, Any, Any, str]]) -> None:
        """The whole request's (name, datatype, shape, "json" | "raw") tensors against the same
        limits summed over its tensors, from the declared shapes, before any is decoded (many
        tensors each under the limit must not add up past it). Shapes and datatypes that are
        not valid are left for the tensor's own decoding to refuse."""
        json_total = bytes_total = 0
        for name, datatype, shape, encoding in declared:
            try:
                count = self.check(name, datatype, check_shape(shape, name), encoding)
            except InvalidInput:
                continue
            json_total += count if encoding == "json" else 0
            bytes_total += count if datatype == "BYTES" else 0
        for total, limit, what, setting in (
            (json_total, self.json_elements, "elements sent as JSON data", "max_json_elements"),
            (bytes_total, self.bytes_elements, "BYTES elements", "max_bytes_elements"),
        ):
            if total > limit:
                raise PayloadTooLarge(
                    f"the request's tensors hold {total} {what} in all; the limit is {limit} "
                    f"per request (setting {setting})"
                )


DEFAULT_LIMITS = TensorLimits()


def numpy_dtype(datatype: str, name: str) -> np.dtype[Any]:
    try:
        return datatypes.numpy_of(datatype)
    except KeyError:
        known = ", ".join(datatypes.DATATYPES)
        raise InvalidInput(f"input {name}: unknown datatype {datatype!r}; one of {known}") from None


def datatype_of(array: np.ndarray) -> str:
    return datatypes.datatype_of(array.dtype)


def check_shape(shape: Any, name: str) -> list[int]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input {name}: shape must be a list of non-negative integers")
    if len(shape) > _MAX_DIMS:
        raise InvalidInput(f"input {name}: shape has more than {_MAX_DIMS} dimensions")
    if math.prod(d for d in shape if d) > _MAX_ELEMENTS:
        raise InvalidInput(f"input {name}: shape {list(shape)} is too large for a tensor")
    return [int(d) for d in shape]


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        flat: list[Any] = []
        for part in data:
            flat.extend(_flatten(part))
        return flat
    return data


def from_json(
    name: str, datatype: str, shape: Any, data: Any, limits: TensorLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """A JSON tensor ("data" flat or nested, row-major) -> numpy array of `shape`."""
    dims = check_shape(shape, name)
    dtype = numpy_dtype(datatype, name)
    count = limits.check(name, datatype, dims, "json")
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(
            f"input {name}: shape {dims} needs {count} elements, data has {len(flat)}"
        )
    if datatype == "BYTES":
        values = np.empty(len(flat), dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise InvalidInput(f"input {name}: BYTES data must be strings")
            try:
                values[i] = value.encode()
            except UnicodeEncodeError:  # JSON allows lone surrogate escapes such as "\ud800"
                raise InvalidInput(
                    f"input {name}: BYTES element {i} is not valid Unicode"
                ) from None
        return values.reshape(dims)
    try:
        values = np.asarray(flat)
    except (TypeError, ValueError):
        raise InvalidInput(f"input {name}: data must be a flat or nested list of numbers") from None
    if values.size and (values.ndim != 1 or values.dtype.kind not in "biuf"):
        raise InvalidInput(f"input {name}: data is not all {datatype} values")
    if datatype == "BOOL" and values.size and values.dtype.kind != "b":
        raise InvalidInput(f"input {name}: BOOL data must be true or false")
    # NOTE: numpy turns [True, 2] into integers, so look for booleans among the element types
    # (map(type) runs in C: ten times faster than an isinstance loop).
    if datatype != "BOOL" and (values.dtype.kind == "b" or not BOOLS.isdisjoint(map(type, flat))):
        raise InvalidInput(f"input {name}: data holds booleans, datatype is {datatype}")
    if dtype.kind in "iu" and values.size:
        # NOTE: numpy turns ints below and above 2**63 into float64, which rounds the large ones.
        if (
            datatype == "UINT64"
            and values.dtype.kind == "f"
            and all(isinstance(v, int) and v >= 0 for v in flat)
        ):
            values = np.asarray(flat, dtype=dtype)
        if values.dtype.kind == "f" and not (
            np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0)
        ):
            raise InvalidInput(
                f"input {name}: {datatype} data holds fractional or non-finite numbers"
            )
        info = np.iinfo(dtype)
        # NOTE: `>= max + 1`, not `> max`: float(2**63 - 1) rounds up to 2**63, which wraps.
        if values.min() < info.min or values.max() >= info.max + 1:
            raise InvalidInput(f"input {name}: data out of the {datatype} range")
    array = values.astype(dtype)
    return array.reshape(dims)


def from_raw(
    name: str, datatype: str, shape: Any, raw: bytes, limits: TensorLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """Raw little-endian bytes (gRPC raw_input_contents, REST binary data) -> numpy array."""
    dims = check_shape(shape, name)
    dtype = numpy_dtype(datatype, name)
    count = limits.check(name, datatype, dims, "raw")
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(dims)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input {name}: {len(raw)} bytes of data, but shape {dims} of {datatype} "
            f"needs {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(dims)


def deserialize_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    # NOTE: a list, not np.empty(count): the shape must not allocate more than the data can fill.
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name}: BYTES data ends after {i} of {count} elements")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input {name}: BYTES element {i} runs past the end of the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise InvalidInput(
            f"input {name}: {len(raw) - offset} bytes left after {count} BYTES elements"
        )
    values = np.empty(count, dtype=object)
    values[:] = items
    return values


def to_raw(array: np.ndarray) -> bytes:
    """A numpy array -> raw little-endian bytes (BYTES: length-prefixed elements)."""
    if array.dtype == object:
        parts = []
        for value in array.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json_data(array: np.ndarray) -> list[Any]:
    """A numpy array -> flat JSON data (BYTES as UTF-8 strings)."""
    flat = array.reshape(-1)
    if array.dtype == object:
        return [
            v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat
        ]
    return flat.tolist()
