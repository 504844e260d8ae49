"""The NVML collector: without NVML it says so and never fails; with a GPU it maps NVML's
readings to metrics. The GPU case runs against a stand-in for the NVML library (the hardware is
the one thing tests fake), on any machine; the no-driver cases are skipped where NVML answers, and
benchmarks/gpu_check.py reads a real GPU there."""

from __future__ import annotations

import builtins
import queue
import sys
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gpuqueue.observability import nvml
from helpers.hardware import needs_no_nvidia_gpu
from obstools import PROMTOOL, NVMLError, Scrape, fake_nvml, promtool_check_metrics


def _scrape(collector: Any) -> Scrape:
    reg = CollectorRegistry()
    reg.register(collector)
    return Scrape(generate_latest(reg).decode())


@needs_no_nvidia_gpu
def test_missing_nvml_library_is_reported_not_raised() -> None:
    # this machine: nvidia-ml-py is installed, the driver's libnvidia-ml.so is not
    session = nvml.NvmlSession()
    assert nvml.read_gpus(session) == []
    status = nvml.nvml_status(session)
    assert status["up"] is False and status["gpus"] == 0
    assert status["error"]
    s = _scrape(nvml.NvmlCollector(session))
    assert s.get("gpuqueue_nvml_up") == 0
    assert not [k for k in s.samples if k[0].startswith("gpuqueue_gpu_")]


def test_missing_pynvml_module(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_pynvml(name: str, *a: Any, **kw: Any) -> Any:
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *a, **kw)

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    monkeypatch.setattr("importlib.import_module", lambda name: no_pynvml(name))
    session = nvml.NvmlSession()
    assert nvml.read_gpus(session) == []
    assert "not installed" in nvml.nvml_status(session)["error"]
    assert _scrape(nvml.NvmlCollector(session)).get("gpuqueue_nvml_up") == 0


@needs_no_nvidia_gpu
def test_command_line_prints_status(tmp_path: Any) -> None:
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-m", "gpuqueue.observability.nvml"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"]["up"] is False and data["gpus"] == []


GPUS = [
    {"uuid": "GPU-aaaa", "util": 87, "mutil": 40, "used": 30 << 30, "total": 141 << 30, "temp": 61,
     "mw": 512_345, "ecc": {0: 3, 1: 0}, "remap": (2, 0, 0, 0)},
    # a GPU that supports less: no ECC, no power reading, no remap, no events
    {"uuid": "GPU-bbbb", "util": 0, "mutil": 0, "used": 0, "total": 80 << 30, "temp": 35,
     "mw": None, "ecc": None, "remap": None, "no_events": True},
    {"uuid": "GPU-cccc", "lost": True},
]


def test_gpu_readings_become_metrics() -> None:
    events: "queue.Queue[tuple[int, int]]" = queue.Queue()
    session = nvml.NvmlSession(module=fake_nvml(GPUS, events))
    gpus = nvml.read_gpus(session)
    assert [g["ok"] for g in gpus] == [True, True, False]
    g0 = gpus[0]
    assert g0["uuid"] == "GPU-aaaa" and g0["name"] == "NVIDIA H200"
    assert g0["utilization_ratio"] == pytest.approx(0.87)
    assert g0["memory_used_bytes"] == 30 << 30 and g0["memory_total_bytes"] == 141 << 30
    assert g0["power_watts"] == pytest.approx(512.345) and g0["power_limit_watts"] == 700
    assert g0["ecc_corrected_total"] == 3 and g0["ecc_uncorrected_total"] == 0
    assert gpus[1]["power_watts"] is None and gpus[1]["ecc_corrected_total"] is None
    assert "lost" in gpus[2]["error"]

    collector = nvml.NvmlCollector(session)
    s = _scrape(collector)
    a = {"gpu": "0", "uuid": "GPU-aaaa"}
    b = {"gpu": "1", "uuid": "GPU-bbbb"}
    assert s.get("gpuqueue_nvml_up") == 1
    assert s.get("gpuqueue_gpu_info", name="NVIDIA H200", driver_version="550.54.15", **a) == 1
    assert s.get("gpuqueue_gpu_up", gpu="2") == 0 and s.get("gpuqueue_gpu_up", gpu="0") == 1
    assert s.get("gpuqueue_gpu_utilization_ratio", **a) == pytest.approx(0.87)
    assert s.get("gpuqueue_gpu_memory_used_bytes", **a) == 30 << 30
    assert s.get("gpuqueue_gpu_temperature_celsius", **b) == 35
    assert s.get("gpuqueue_gpu_power_watts", **b) is None  # not supported: no series, no zero
    assert s.get("gpuqueue_gpu_ecc_errors_total", type="corrected", **a) == 3
    assert s.get("gpuqueue_gpu_ecc_errors_total", type="uncorrected", **a) == 0
    assert s.get("gpuqueue_gpu_remapped_rows", type="correctable", **a) == 2
    assert s.get("gpuqueue_gpu_row_remap_failed", **a) == 0
    assert s.get("gpuqueue_gpu_xid_monitored", **a) == 1
    assert s.get("gpuqueue_gpu_xid_monitored", **b) == 0
    assert s.get("gpuqueue_gpu_xid_errors_total", **a) == 0  # there from the start, so increase() works
    assert s.types["gpuqueue_gpu_xid_errors"] == "counter"

    events.put((0, 79))
    events.put((0, 48))
    deadline = time.monotonic() + 10
    while nvml.read_gpus(session)[0].get("xid_errors_total") != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    s = _scrape(collector)
    assert s.get("gpuqueue_gpu_xid_errors_total", **a) == 2
    assert s.get("gpuqueue_gpu_last_xid", **a) == 48
    if PROMTOOL:
        lint = promtool_check_metrics(s.text)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    w = nvml.ensure_xid_watcher(session)
    assert w is not None
    w.stop()


def test_driver_that_stops_answering_is_retried() -> None:
    events: "queue.Queue[tuple[int, int]]" = queue.Queue()
    mod = fake_nvml(GPUS[:1], events)
    session = nvml.NvmlSession(module=mod, retry_s=0.0)
    assert len(nvml.read_gpus(session)) == 1

    def gone() -> int:
        raise NVMLError("Driver Not Loaded")

    mod.nvmlDeviceGetCount = gone
    assert nvml.read_gpus(session) == []  # reported, not raised
    assert _scrape(nvml.NvmlCollector(session, watch_xid=False)).get("gpuqueue_nvml_up") == 0
    mod.nvmlDeviceGetCount = lambda: 1
    assert len(nvml.read_gpus(session)) == 1
    assert mod.inits >= 2  # loaded again after the reset
