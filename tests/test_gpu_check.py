"""loadtests/gpu_check.py's onnxruntime-gpu handling: the wheel found whole or joined from the
parts that device calls carry one at a time, and a CPU fallback (never an install) without a GPU
or a wheel. The whole script's CPU fallback runs in tests/integration/test_gpu_check.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loadtests import gpu_check

WHEEL = "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"


def test_the_wheel_is_found_whole(tmp_path: Path) -> None:
    (tmp_path / WHEEL).write_bytes(b"whole")
    (tmp_path / "onnxruntime_gpu-1.30.0-cp312-none.whl").write_bytes(b"other version")
    assert gpu_check.find_wheel(tmp_path, tmp_path / "scratch") == tmp_path / WHEEL


def test_parts_are_joined_in_name_order(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    for index, start in enumerate(range(0, len(data), 70_000)):
        (tmp_path / f"{WHEEL}.part-a{chr(97 + index)}").write_bytes(data[start : start + 70_000])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    joined = gpu_check.find_wheel(tmp_path, scratch)
    assert joined == scratch / WHEEL
    assert hashlib.sha256(joined.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_parts_of_two_wheels_are_refused(tmp_path: Path) -> None:
    (tmp_path / f"{WHEEL}.part-aa").write_bytes(b"a")
    (tmp_path / f"{WHEEL.replace('cp312', 'cp311')}.part-ab").write_bytes(b"b")
    with pytest.raises(SystemExit, match="more than one wheel"):
        gpu_check.find_wheel(tmp_path, tmp_path)


def test_no_wheel_no_folder(tmp_path: Path) -> None:
    assert gpu_check.find_wheel(tmp_path / "absent", tmp_path) is None
    assert gpu_check.find_wheel(tmp_path, tmp_path) is None


def test_without_a_gpu_nothing_is_installed(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / WHEEL).write_bytes(b"not a real wheel: installing it would fail")
    monkeypatch.setattr(gpu_check, "gpu_visible", lambda: False)
    import onnxruntime as ort

    if gpu_check.CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing would be installed either way")
    assert gpu_check.ensure_cuda_onnxruntime(tmp_path) == "no GPU"


@pytest.mark.parametrize(
    ("visible", "cuda", "gpu", "fails"),
    [(True, True, True, False), (True, False, False, True), (False, True, False, False),
     (False, False, False, False)],
)  # fmt: skip
def test_a_gpu_that_onnxruntime_cannot_use_fails_the_check(visible, cuda, gpu, fails) -> None:
    ran_on_gpu, problem = gpu_check.run_mode(visible, cuda, "no wheel in .whl")
    assert ran_on_gpu is gpu and (problem is not None) is fails


def test_a_gpu_without_the_wheel_falls_back_to_cpu_and_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "gpu_visible", lambda: True)
    monkeypatch.delenv(gpu_check.REEXEC, raising=False)
    assert "no onnxruntime_gpu-1.31.1-*.whl in" in gpu_check.ensure_cuda_onnxruntime(tmp_path)
