"""Triton version numbers on V2: derived from the store tag, newer is higher, and a request may
name a version by its number or its tag; per-row scalars declared in Triton's [-1, 1] form."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.errors import ModelNotFound
from service.protocols.v2 import dataplane, versions
from service.protocols.v2.dataplane import InferRequest, Signature, Tensor
from tests.protocols.v2.test_dataplane import FakeRunner, image_spec, run, serving


def test_a_store_tag_numbers_as_its_creation_time_so_newer_is_higher() -> None:
    assert versions.number("v2-20261203003208-732") == "20261203003208732"
    older, newer = "v3-20261203003208-731", "v2-20261203003208-732"  # spec version aside
    assert int(versions.number(newer)) > int(versions.number(older))
    assert int(versions.number(newer)) < 2**63  # perf_analyzer parses it as an int64
    assert versions.number("v1") == "1"  # tags of another shape: their digits


def test_requests_name_a_version_by_number_or_tag_and_answers_give_the_number() -> None:
    runner = FakeRunner(image_spec().model_copy(update={"version": "v1-20261203003208-732"}))
    state = serving(runner)
    for version in ("20261203003208732", "v1-20261203003208-732", ""):
        assert dataplane.resolve(state, "tiny", version) is runner
    meta = dataplane.model_metadata(state, "tiny")
    assert meta["versions"] == ["20261203003208732"]
    assert meta["parameters"]["version_tags"] == {"20261203003208732": "v1-20261203003208-732"}
    image = np.zeros((1, 8, 8, 3), np.uint8)
    answer = run(
        dataplane.infer(state, InferRequest("tiny", "20261203003208732", inputs={"image": image}))
    )
    assert answer.version == "20261203003208732"
    for unknown in ("20261203003208733", "v9"):
        with pytest.raises(ModelNotFound, match=f"no served version '{unknown}'"):
            dataplane.resolve(state, "tiny", unknown)


def test_one_value_per_row_is_declared_rows_by_one_and_taken_either_way() -> None:
    texts = Tensor("text", "BYTES", [-1])
    batched = Signature(inputs=[texts], outputs=[], infer=None)  # type: ignore[arg-type]
    whole = Signature(inputs=[texts], outputs=[], infer=None, batchable=False)  # type: ignore[arg-type]
    assert dataplane.declared_shape(texts, batched) == [-1, 1]
    assert dataplane.declared_shape(texts, whole) == [-1]  # no batch dim: its own shape
    assert dataplane.declared_shape(Tensor("tokens", "INT64", [-1, -1]), batched) == [-1, -1]
