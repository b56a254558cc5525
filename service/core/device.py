"""The device class a model is tuned for: the CPU model and the cores this process may use, or
the GPU's name. Tuned settings (`deepserve models tune`) are recorded per device class, so a
server on the same kind of machine uses them and one on another falls back to its own entry or
the defaults."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

from service.core.machine import usable_cores

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the machine type."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        return " ".join(found.group(1).split())
    import platform

    return platform.processor() or platform.machine() or "unknown"


@cache
def gpu_name() -> str | None:
    """The first GPU's name (NVML when installed, else nvidia-smi), None without a GPU."""
    try:
        import pynvml  # nvidia-ml-py, installed with the gpu extra

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def uses_gpu(device: str) -> bool:
    """Whether a model with this `device` setting runs on CUDA here: the same rule as
    service/runtime/sessions.py available_providers (CUDA when wanted and onnxruntime offers
    it), so tuning and serving name the same device class."""
    if device == "cpu":
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def device_class(gpu: bool) -> str:
    """ "cpu: <model> x <cores>" or "gpu: <name>": the key of a tuned entry."""
    if gpu:
        return f"gpu: {gpu_name() or 'unknown'}"
    return f"cpu: {cpu_model()} x {usable_cores()}"
