"""Helpers for the observability tests: scrape, parse, and find promtool."""

from __future__ import annotations

import queue
import shutil
import subprocess
import types
from typing import Any, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus); CI installs it"
)


class Scrape:
    """One parsed scrape: family types and sample values by (name, labels)."""

    def __init__(self, text: str):
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            for s in fam.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, metric: str, /, **labels: str) -> Optional[float]:
        """The value of the one sample with exactly these labels, or None."""
        return self.samples.get((metric, frozenset(labels.items())))

    def sum(self, metric: str, /, **labels: str) -> float:
        """Sum over the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == metric and want <= set(ls))

    def series(self, metric: str, /, **labels: str) -> list[dict[str, str]]:
        want = set(labels.items())
        return [dict(ls) for (n, ls) in self.samples if n == metric and want <= set(ls)]


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def scrape_server(server: Any, accept: Optional[str] = None) -> Scrape:
    import requests

    headers = dict(server.headers)
    if accept:
        headers["Accept"] = accept
    r = requests.get(server.url + "gpuqueue/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return Scrape(r.text)


# ------------------------------------------------------------------ a stand-in NVML library
class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_Timeout(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


def fake_nvml(gpus: list[dict[str, Any]], events: "queue.Queue[tuple[int, int]]") -> types.ModuleType:
    """A module with pynvml's API over ``gpus``; ``events`` feeds (gpu index, xid) pairs."""
    m = types.ModuleType("fake_pynvml")
    m.NVMLError, m.NVMLError_NotSupported, m.NVMLError_Timeout = NVMLError, NVMLError_NotSupported, NVMLError_Timeout
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_MEMORY_ERROR_TYPE_CORRECTED, m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
    m.NVML_VOLATILE_ECC = 0
    m.nvmlEventTypeXidCriticalError = 8
    m.inits = 0

    def need(g: dict[str, Any], key: str) -> Any:
        if g.get(key) is None:
            raise NVMLError_NotSupported("Not Supported")
        return g[key]

    def init() -> None:
        m.inits += 1

    def handle(i: int) -> dict[str, Any]:
        if gpus[i].get("lost"):
            raise NVMLError_GpuIsLost("GPU is lost")
        return gpus[i]

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: b"550.54.15"
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = handle
    m.nvmlDeviceGetUUID = lambda h: h["uuid"].encode()
    m.nvmlDeviceGetName = lambda h: "NVIDIA H200"
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=need(h, "util"), memory=need(h, "mutil"))
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=h["used"], total=h["total"], free=h["total"] - h["used"])
    m.nvmlDeviceGetTemperature = lambda h, sensor: need(h, "temp")
    m.nvmlDeviceGetPowerUsage = lambda h: need(h, "mw")
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    m.nvmlDeviceGetTotalEccErrors = lambda h, kind, counter: need(h, "ecc")[kind]
    m.nvmlDeviceGetRemappedRows = lambda h: need(h, "remap")
    m.nvmlEventSetCreate = lambda: "set"
    m.nvmlEventSetFree = lambda es: None

    def register(h: dict[str, Any], kind: int, es: Any) -> None:
        if h.get("no_events"):
            raise NVMLError_NotSupported("Not Supported")

    def wait(es: Any, timeout_ms: int) -> Any:
        try:
            i, xid = events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise NVMLError_Timeout("Timeout") from None
        return types.SimpleNamespace(device=gpus[i], eventType=8, eventData=xid)

    m.nvmlDeviceRegisterEvents = register
    m.nvmlEventSetWait_v2 = wait
    return m


