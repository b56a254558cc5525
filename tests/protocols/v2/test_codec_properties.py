"""Property tests for the V2 tensor codecs: round trips of every datatype and shape, and refusals.

The round trips go through the functions the transports call: REST JSON `data` (through a real
json.dumps/json.loads, as rest.py does), and raw little-endian bytes (REST binary extension and
gRPC raw_input_contents). Every refusal must be an InvalidInput that names the input.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.core.datatypes import NUMPY_OF
from service.core.errors import InvalidInput, PayloadTooLarge
from service.protocols.v2 import codecs

DATATYPES = sorted(NUMPY_OF)
NUMERIC = [d for d in DATATYPES if d != "BYTES"]
INTEGERS = [d for d in NUMERIC if NUMPY_OF[d].kind in "iu"]
FLOATS = [d for d in NUMERIC if NUMPY_OF[d].kind == "f"]

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
# Small shapes, scalars (shape []) and zero-size dimensions included.
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4).map(list)
# Any shape a client may send: also dimensions far past what numpy can hold.
any_shapes = st.lists(st.one_of(st.integers(0, 4), st.integers(0, 2**70)), max_size=6) | st.lists(
    st.just(1), min_size=60, max_size=70
)
layouts: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "contiguous": lambda a: a,
    "reversed": lambda a: a[::-1] if a.ndim else a,
    "transposed": lambda a: a.T,
    "fortran": np.asfortranarray,
}


def bytes_wire(items: list[bytes]) -> bytes:
    """The BYTES wire format, spelled out: a 4-byte little-endian length before each element."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def object_array(items: list[Any], shape: list[int]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


@st.composite
def tensors(
    draw: st.DrawFn,
    datatype: str,
    elements: st.SearchStrategy[bytes] | None = None,
    shape: list[int] | None = None,
):
    """An array of `datatype` with arbitrary shape, values (NaN, inf, -0.0, ...) and layout."""
    shape = draw(shapes) if shape is None else shape
    if datatype == "BYTES":
        count = math.prod(shape)
        items = draw(
            st.lists(
                elements if elements is not None else st.binary(max_size=12),
                min_size=count,
                max_size=count,
            )
        )
        array = object_array(items, shape)
    else:
        array = draw(hnp.arrays(NUMPY_OF[datatype], shape))
    return layouts[draw(st.sampled_from(sorted(layouts)))](array)


def assert_same_tensor(back: np.ndarray, array: np.ndarray, datatype: str, bitwise: bool) -> None:
    assert back.shape == array.shape
    assert codecs.datatype_of(back) == datatype
    if datatype == "BYTES":
        assert [type(v) for v in back.reshape(-1)] == [bytes] * array.size
        assert back.reshape(-1).tolist() == array.reshape(-1).tolist()
    elif bitwise:
        assert back.tobytes() == np.ascontiguousarray(array).tobytes()
    else:
        np.testing.assert_array_equal(back, array)  # NaN equals NaN here
        if datatype in FLOATS:
            numbers = ~np.isnan(array)
            assert (np.signbit(back[numbers]) == np.signbit(array[numbers])).all()  # -0.0 stays


def refused(call: Callable[[], Any], name: str) -> InvalidInput | PayloadTooLarge:
    """The call raises InvalidInput, or PayloadTooLarge for a shape over the element limits (no
    other type), with a message that names the input."""
    with pytest.raises((InvalidInput, PayloadTooLarge)) as caught:
        call()
    assert caught.value.message and f"input {name}" in caught.value.message
    return caught.value


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
@PROPERTY
@given(data=st.data(), name=names)
def test_raw_round_trip(datatype: str, data: st.DataObject, name: str) -> None:
    array = data.draw(tensors(datatype))
    raw = codecs.to_raw(array)
    if datatype == "BYTES":
        assert raw == bytes_wire(list(array.reshape(-1)))
    else:
        assert len(raw) == array.size * NUMPY_OF[datatype].itemsize
    back = codecs.from_raw(name, datatype, list(array.shape), raw)
    assert_same_tensor(back, array, datatype, bitwise=True)
    assert codecs.to_raw(back) == raw


@pytest.mark.parametrize("datatype", NUMERIC)
@PROPERTY
@given(data=st.data())
def test_raw_is_little_endian_whatever_the_array_byte_order(
    datatype: str, data: st.DataObject
) -> None:
    array = data.draw(tensors(datatype))
    swapped = array.astype(array.dtype.newbyteorder(">"))
    raw = codecs.to_raw(swapped)
    assert raw == codecs.to_raw(array)
    assert raw == array.astype(array.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("datatype", DATATYPES)
@PROPERTY
@given(data=st.data(), name=names, nested=st.booleans())
def test_json_round_trip(datatype: str, data: st.DataObject, name: str, nested: bool) -> None:
    # JSON carries BYTES as UTF-8 text, so here they are text; arbitrary bytes are tested below.
    array = data.draw(tensors(datatype, elements=st.text(max_size=8).map(str.encode)))
    values = codecs.to_json_data(array)
    assert isinstance(values, list) and len(values) == array.size
    if nested and array.ndim:  # clients may send row-major nested lists as well as flat ones
        values = np.asarray(values, dtype=object).reshape(array.shape).tolist()
    wire = json.loads(json.dumps({"data": values}))["data"]
    back = codecs.from_json(name, datatype, list(array.shape), wire)
    assert_same_tensor(back, array, datatype, bitwise=False)


@PROPERTY
@given(items=st.lists(st.binary(max_size=12), max_size=12), name=names)
def test_json_bytes_that_are_not_utf8_come_back_with_replacement_characters(
    items: list[bytes], name: str
) -> None:
    values = codecs.to_json_data(object_array(items, [len(items)]))
    wire = json.loads(json.dumps(values))
    back = codecs.from_json(name, "BYTES", [len(items)], wire)
    assert back.tolist() == [item.decode("utf-8", errors="replace").encode() for item in items]


@pytest.mark.parametrize("datatype", DATATYPES)
@PROPERTY
@given(name=names, shape=any_shapes, data=st.data())
def test_from_raw_refuses_or_inverts_to_raw(
    datatype: str, name: str, shape: list[int], data: st.DataObject
) -> None:
    """Whatever the shape and bytes, from_raw either refuses them or to_raw gives them back."""
    count = math.prod(shape)
    candidates = [st.binary(max_size=64)]
    if datatype == "BYTES":
        candidates.append(st.lists(st.binary(max_size=8), max_size=8).map(bytes_wire))
        if count <= 16:
            items = st.lists(st.binary(max_size=8), min_size=count, max_size=count)
            candidates.append(items.map(bytes_wire))
    elif count * NUMPY_OF[datatype].itemsize <= 256:
        size = count * NUMPY_OF[datatype].itemsize
        candidates.append(st.binary(min_size=size, max_size=size))
    raw = data.draw(st.one_of(candidates))
    try:
        array = codecs.from_raw(name, datatype, shape, raw)
    except (InvalidInput, PayloadTooLarge) as error:  # too large: over the element limits
        assert error.message and f"input {name}" in error.message
        return
    assert array.shape == tuple(shape)
    assert codecs.datatype_of(array) == datatype
    assert codecs.to_raw(array) == raw


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
@PROPERTY
@given(name=names, shape=shapes, data=st.data())
def test_raw_byte_count_must_match_shape_and_datatype(
    datatype: str, name: str, shape: list[int], data: st.DataObject
) -> None:
    expected = math.prod(shape) * NUMPY_OF[datatype].itemsize
    size = data.draw(st.integers(0, expected + 40).filter(lambda n: n != expected))
    error = refused(lambda: codecs.from_raw(name, datatype, shape, bytes(size)), name)
    assert str(size) in error.message and str(expected) in error.message


@PROPERTY
@given(
    name=names,
    shape=shapes,
    items=st.lists(st.binary(max_size=8), max_size=20),
    data=st.data(),
)
def test_raw_bytes_must_hold_exactly_the_shape_elements(
    name: str, shape: list[int], items: list[bytes], data: st.DataObject
) -> None:
    wire = bytes_wire(items)
    if len(items) == math.prod(shape):  # right count: break the framing instead
        if wire and data.draw(st.booleans()):
            wire = wire[: data.draw(st.integers(0, len(wire) - 1))]
        else:
            wire += data.draw(st.binary(min_size=1, max_size=8))
    refused(lambda: codecs.from_raw(name, "BYTES", shape, wire), name)


@pytest.mark.parametrize("datatype", DATATYPES)
@PROPERTY
@given(name=names, shape=shapes, data=st.data())
def test_json_data_length_must_match_the_shape(
    datatype: str, name: str, shape: list[int], data: st.DataObject
) -> None:
    count = math.prod(shape)
    length = data.draw(st.integers(0, count + 8).filter(lambda n: n != count))
    values = codecs.to_json_data(data.draw(tensors(datatype, shape=[length])))
    error = refused(lambda: codecs.from_json(name, datatype, shape, values), name)
    assert str(count) in error.message and str(length) in error.message


def wrong_values(datatype: str) -> st.SearchStrategy[Any]:
    """JSON values that are not of `datatype`."""
    others = st.one_of(
        st.none(),
        st.text(max_size=4),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        st.lists(st.integers(), max_size=3).filter(lambda v: len(v) != 1),
    )
    if datatype == "BYTES":
        lone_surrogate = st.tuples(
            st.text(max_size=3), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
        ).map("".join)
        numbers = st.one_of(st.booleans(), st.integers(), st.floats())
        return st.one_of(
            numbers, st.none(), st.dictionaries(st.text(max_size=2), st.none()), lone_surrogate
        )
    if datatype == "BOOL":
        return st.one_of(others.filter(lambda v: v != []), st.integers(), st.floats())
    if datatype in FLOATS:
        return st.one_of(others, st.booleans())
    info = np.iinfo(NUMPY_OF[datatype])
    fractional = st.floats(allow_nan=True, allow_infinity=True).filter(
        lambda v: not math.isfinite(v) or v % 1 != 0
    )
    out_of_range = st.integers(max_value=int(info.min) - 1) | st.integers(
        min_value=int(info.max) + 1
    )
    return st.one_of(
        others,
        st.booleans(),
        fractional,
        out_of_range,
        out_of_range.map(float).filter(lambda v: v < info.min or v >= info.max + 1),
    )


@pytest.mark.parametrize("datatype", DATATYPES)
@PROPERTY
@given(name=names, data=st.data())
def test_json_values_of_the_wrong_kind_are_refused(
    datatype: str, name: str, data: st.DataObject
) -> None:
    array = data.draw(tensors(datatype, elements=st.text(max_size=4).map(str.encode)))
    assume(array.size)
    values = codecs.to_json_data(array)
    values[data.draw(st.integers(0, len(values) - 1))] = data.draw(wrong_values(datatype))
    wire = json.loads(json.dumps(values))
    refused(lambda: codecs.from_json(name, datatype, list(array.shape), wire), name)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=12,
)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e300 as FP16
@PROPERTY
@given(name=names, shape=any_shapes | shapes, value=json_values)
def test_from_json_refuses_or_returns_the_shape(
    datatype: str, name: str, shape: list[int], value: Any
) -> None:
    """Any JSON `data` and shape: an array of that shape and datatype, or InvalidInput."""
    try:
        array = codecs.from_json(name, datatype, shape, value)
    except (InvalidInput, PayloadTooLarge) as error:
        assert error.message and f"input {name}" in error.message
        return
    assert array.shape == tuple(shape)
    assert codecs.datatype_of(array) == datatype


bad_shapes = st.one_of(
    st.lists(st.integers(max_value=-1), min_size=1, max_size=4),
    st.lists(st.one_of(st.booleans(), st.floats(), st.text(max_size=2), st.none()), min_size=1),
    st.none()
    | st.integers()
    | st.text(max_size=3)
    | st.dictionaries(st.text(max_size=2), st.none()),
    st.lists(st.just(1), min_size=65, max_size=80),  # more dimensions than numpy allows
    st.lists(st.integers(2**60, 2**70), min_size=1, max_size=3).map(lambda s: [0, *s]),
)


@pytest.mark.parametrize("datatype", DATATYPES)
@PROPERTY
@given(name=names, shape=bad_shapes, raw=st.binary(max_size=16))
def test_bad_shapes_are_refused(datatype: str, name: str, shape: Any, raw: bytes) -> None:
    # Zero-size data, so a shape is the only thing wrong when it holds a zero dimension.
    refused(lambda: codecs.from_json(name, datatype, shape, []), name)
    refused(lambda: codecs.from_raw(name, datatype, shape, b""), name)
    refused(lambda: codecs.from_raw(name, datatype, shape, raw), name)


@PROPERTY
@given(name=names, datatype=st.text(max_size=8).filter(lambda d: d not in NUMPY_OF))
def test_unknown_datatypes_are_refused(name: str, datatype: str) -> None:
    error = refused(lambda: codecs.from_json(name, datatype, [1], [1]), name)
    assert all(known in error.message for known in DATATYPES)
    refused(lambda: codecs.from_raw(name, datatype, [1], b"\x00"), name)


# --- what the properties found, pinned -----------------------------------------------------------


@pytest.mark.parametrize(
    "datatype,shape,data",
    [
        ("BYTES", [1], json.loads('["\\ud800"]')),  # a lone surrogate: valid JSON, not UTF-8
        ("INT64", [1], [2.0**63]),  # wrapped to -2**63
        ("UINT64", [2], [2**64 - 1, 0.0]),  # wrapped to 0
        ("INT8", [2], [True, 2]),  # a boolean among numbers
        ("BOOL", [2], [0.5, 2]),  # numbers as BOOL
        ("FP32", [0, 2**63 - 1], []),  # ValueError from numpy
        ("FP32", [1] * 65, [1]),  # ValueError from numpy
    ],
)
def test_json_tensors_the_properties_found(datatype: str, shape: list[int], data: Any) -> None:
    refused(lambda: codecs.from_json("x", datatype, shape, data), "x")


def test_uint64_json_above_and_below_2_to_the_63_keeps_every_digit() -> None:
    back = codecs.from_json("x", "UINT64", [3], [0, 2**63 + 1, 2**64 - 1])
    assert back.tolist() == [0, 2**63 + 1, 2**64 - 1]


@pytest.mark.parametrize("shape", [[2**40], [2**62, 2**62]])
def test_bytes_shape_larger_than_the_data_is_refused_before_allocating(shape: list[int]) -> None:
    refused(lambda: codecs.from_raw("x", "BYTES", shape, b""), "x")
