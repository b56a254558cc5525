import struct

import numpy as np
import pytest

from service.core.datatypes import NUMPY_OF
from service.core.errors import InvalidInput, PayloadTooLarge
from service.protocols.v2 import codecs


@pytest.mark.parametrize("datatype", [d for d in NUMPY_OF if d != "BYTES"])
def test_raw_round_trip_every_numeric_datatype(datatype: str) -> None:
    dtype = NUMPY_OF[datatype]
    array = (np.arange(12) % 2 if datatype == "BOOL" else np.arange(12)).astype(dtype).reshape(3, 4)
    raw = codecs.to_raw(array)
    assert len(raw) == 12 * dtype.itemsize
    back = codecs.from_raw("x", datatype, [3, 4], raw)
    np.testing.assert_array_equal(back, array)
    assert codecs.datatype_of(back) == datatype


def test_bytes_use_the_length_prefixed_wire_format() -> None:
    array = np.array([b"ab", b"", "\u00e9".encode()], dtype=object)
    raw = codecs.to_raw(array)
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + (
        "\u00e9".encode()
    )
    back = codecs.from_raw("t", "BYTES", [3], raw)
    assert back.tolist() == array.tolist()
    assert codecs.to_json_data(back) == ["ab", "", "\u00e9"]


@pytest.mark.parametrize(
    "raw,message",
    [
        (struct.pack("<I", 5) + b"abc", "runs past the end"),
        (struct.pack("<I", 1) + b"a", "ends after 1 of 2"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"zz", "bytes left"),
    ],
)
def test_malformed_bytes_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        codecs.from_raw("t", "BYTES", [2], raw)


def test_raw_size_must_match_the_shape() -> None:
    with pytest.raises(InvalidInput, match="needs 24 bytes"):
        codecs.from_raw("x", "FP32", [2, 3], bytes(20))


def test_json_nested_or_flat_data() -> None:
    flat = codecs.from_json("x", "INT64", [2, 2], [1, 2, 3, 4])
    nested = codecs.from_json("x", "INT64", [2, 2], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.int64
    assert codecs.from_json("t", "BYTES", [1], ["hi"]).tolist() == [b"hi"]


@pytest.mark.parametrize(
    "datatype,shape,data,message",
    [
        ("FP32", [3], [1.0, 2.0], "needs 3 elements, data has 2"),
        ("INT32", [2], [1.5, 2], "fractional"),
        ("UINT8", [2], [1, 300], "out of the UINT8 range"),
        ("INT64", [1], [True], "booleans"),
        ("FP32", [1], ["a"], "not all FP32"),
        ("BYTES", [1], [3], "must be strings"),
        ("FP32", [-1], [], "non-negative"),
        ("FP33", [1], [1], "unknown datatype"),
    ],
)
def test_bad_json_tensors_say_what_is_wrong(datatype, shape, data, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        codecs.from_json("x", datatype, shape, data)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        # 5,000,000 zero-length BYTES (20 MB of lengths): refused from the shape, not decoded
        (lambda: codecs.from_raw("t", "BYTES", [5_000_000], b"\0" * 4), "max_bytes_elements"),
        (lambda: codecs.from_json("t", "BYTES", [70_000], []), "max_bytes_elements"),
        # a [1, 10000000] JSON tensor: refused before the data is looked at
        (lambda: codecs.from_json("t", "INT64", [1, 10_000_000], None), "max_json_elements"),
    ],
)
def test_declared_shapes_over_the_element_limits_are_refused_before_decoding(call, needle):
    with pytest.raises(PayloadTooLarge, match=needle) as refused:
        call()
    assert "input t" in refused.value.message


def test_element_limits_come_from_settings() -> None:
    from service.core.settings import Settings

    limits = codecs.TensorLimits.of(Settings(max_json_elements=4, max_bytes_elements=2))
    assert codecs.from_json("x", "INT64", [4], [1, 2, 3, 4], limits).tolist() == [1, 2, 3, 4]
    with pytest.raises(PayloadTooLarge):
        codecs.from_json("x", "INT64", [5], [1, 2, 3, 4, 5], limits)
    with pytest.raises(PayloadTooLarge):
        codecs.from_raw(
            "t", "BYTES", [3], codecs.to_raw(np.array([b"a"] * 3, dtype=object)), limits
        )


def test_booleans_among_numbers_are_still_found() -> None:
    with pytest.raises(InvalidInput, match="booleans"):
        codecs.from_json("x", "INT64", [3], [1, True, 2])


def test_the_element_limits_hold_for_the_request_as_a_whole() -> None:
    limits = codecs.TensorLimits(json_elements=10, bytes_elements=4)
    limits.check_request([("a", "INT64", [5], "json"), ("b", "INT64", [5], "json")])
    with pytest.raises(PayloadTooLarge, match="11 elements sent as JSON data in all"):
        limits.check_request([("a", "INT64", [5], "json"), ("b", "INT64", [6], "json")])
    limits.check_request([("a", "INT64", [500], "raw")])  # raw numeric data: the body bounds it
    with pytest.raises(PayloadTooLarge, match="max_bytes_elements"):
        limits.check_request([("a", "BYTES", [3], "raw"), ("b", "BYTES", [2], "json")])
    # what is not a tensor is left for its own decoding to refuse
    limits.check_request([(None, "INT64", "nope", "json"), ("c", 7, [1], "json")])
