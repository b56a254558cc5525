"""GPU utilisation and memory in /metrics, read through NVML (nvidia-ml-py) at scrape time.

Where no GPU or no NVML library is present, the series are simply not exported: the first scrape
finds that out and later ones skip NVML altogether. The readings are the device's (every process
on it), like nvidia-smi's, labelled with the GPU's index and name.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("deepserve.gpu")


def load_nvml() -> Any | None:
    """The initialised pynvml module, or None without a GPU or NVML library."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
    except Exception as error:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ImportError ...
        log.debug("no GPU metrics: %s: %s", type(error).__name__, error)
        return None
    return pynvml


class GpuCollector(Collector):
    """deepserve_gpu_utilization_ratio, deepserve_gpu_memory_used_bytes and
    deepserve_gpu_memory_total_bytes per GPU, or nothing when there is none."""

    def __init__(self, nvml_loader: Any = load_nvml) -> None:
        self._loader = nvml_loader
        self._nvml: Any | None = None
        self._looked = False
        self._lock = threading.Lock()
        self._failing: set[int] = set()

    def nvml(self) -> Any | None:
        with self._lock:
            if not self._looked:
                self._nvml, self._looked = self._loader(), True
            return self._nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self.nvml()
        if nvml is None:
            return
        labels = ["gpu", "name"]
        utilization = GaugeMetricFamily(
            "deepserve_gpu_utilization_ratio",
            "Fraction of the last sample period in which the GPU ran a kernel (NVML)",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "deepserve_gpu_memory_used_bytes",
            "GPU memory in use, all processes (NVML)",
            labels=labels,
        )
        total = GaugeMetricFamily(
            "deepserve_gpu_memory_total_bytes", "GPU memory on the device (NVML)", labels=labels
        )
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as error:  # the driver gone: no GPU series, the rest of /metrics stays
            self._complain(-1, error)
            return
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as error:  # one GPU's reading failing leaves the others
                self._complain(index, error)
                continue
            self._failing.discard(index)
            label = [str(index), name.decode() if isinstance(name, bytes) else str(name)]
            used.add_metric(label, float(memory.used))
            total.add_metric(label, float(memory.total))
            with contextlib.suppress(Exception):  # a MIG slice has no utilisation, but memory
                utilization.add_metric(label, nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
        yield utilization
        yield used
        yield total

    def _complain(self, index: int, error: Exception) -> None:
        """Log a failing reading once until it succeeds again (-1: the device count)."""
        if index not in self._failing:
            self._failing.add(index)
            log.warning("GPU %s: NVML reading failed: %s", index if index >= 0 else "*", error)


GPU_REGISTRY = CollectorRegistry(auto_describe=False)
"""The GPU readings, apart from the counters of prometheus_client's registries: rendered after
them on every /metrics scrape (service/protocols/http/metrics.py)."""
GPU_REGISTRY.register(GpuCollector())
