"""GPU readings in /metrics: none on a machine without a GPU (this one: the real pynvml finds no
NVML library), and with one, utilisation and memory per GPU in valid Prometheus text. NVML
itself cannot run here, so the GPU case uses a stand-in module with NVML's calls."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from service.core.gpu_metrics import GpuCollector, load_nvml
from service.protocols.http.metrics import Exposition


class FakeNvml:
    """Two GPUs, the second failing its reading once."""

    def __init__(self) -> None:
        self.fail_next = {1}
        self.reads = 0

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.fail_next:
            self.fail_next.discard(index)
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        self.reads += 1
        return SimpleNamespace(gpu=37 + handle, memory=5)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=(handle + 1) * 2**30, total=141 * 2**30, free=0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, sample.labels["gpu"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_no_gpu_means_no_series_and_nvml_is_asked_once() -> None:
    calls = []
    collector = GpuCollector(lambda: calls.append(1))
    registry = CollectorRegistry()
    registry.register(collector)
    assert generate_latest(registry) == b""
    generate_latest(registry)
    assert calls == [1]
    if load_nvml() is None:  # this machine has no NVML library: /metrics has no GPU series
        assert b"deepserve_gpu_" not in Exposition.render()
    else:
        assert b"deepserve_gpu_memory_total_bytes{" in Exposition.render()


def test_a_gpu_s_utilisation_and_memory_per_device_and_a_failing_one_left_out() -> None:
    nvml = FakeNvml()
    registry = CollectorRegistry()
    registry.register(GpuCollector(lambda: nvml))
    first = samples(registry)  # GPU 1 fails this once: only GPU 0
    assert first == {
        ("deepserve_gpu_utilization_ratio", "0"): 0.37,
        ("deepserve_gpu_memory_used_bytes", "0"): float(2**30),
        ("deepserve_gpu_memory_total_bytes", "0"): float(141 * 2**30),
    }
    second = samples(registry)
    assert second[("deepserve_gpu_utilization_ratio", "1")] == 0.38
    assert second[("deepserve_gpu_memory_used_bytes", "1")] == float(2 * 2**30)
    assert nvml.reads == 3  # read at every scrape, not cached


def test_a_lost_driver_drops_the_gpu_series_not_the_scrape() -> None:
    nvml = FakeNvml()
    nvml.fail_next = set()

    def lost() -> int:
        raise RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED")

    registry = CollectorRegistry()
    registry.register(GpuCollector(lambda: nvml))
    assert samples(registry)  # readings while the driver is there
    nvml.nvmlDeviceGetCount = lost  # type: ignore[method-assign]
    assert generate_latest(registry) == b""
