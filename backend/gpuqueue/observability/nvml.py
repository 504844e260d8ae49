"""Per-GPU health from NVML (nvidia-ml-py): as plain dicts, and as Prometheus metrics.

``read_gpus()`` answers a list with one dict per GPU NVML sees (``[]`` without NVML); it is what
``benchmarks/gpu_check.py`` prints. ``NvmlCollector`` turns the same readings into Prometheus
metrics at scrape time (names and meanings in ``docs/metrics.md``; they follow what DCGM's
exporter measures, in Prometheus base units). Neither ever raises for a missing or broken NVML:
the collector reports ``gpuqueue_nvml_up 0`` instead, and tries to load NVML again at most once a
minute (a driver installed or reloaded later is picked up).

XID errors only arrive as NVML events, so the collector starts one daemon thread per process that
waits on an NVML event set (``XidWatcher``) and counts them per GPU. A GPU whose driver refuses
event registration (some containers, vGPU) is reported with ``gpuqueue_gpu_xid_monitored 0``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any, Callable, Iterable, Optional

log = logging.getLogger("gpuqueue.nvml")

RETRY_S = 60.0  # a failed NVML load is tried again after this long


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class NvmlSession:
    """NVML for this process: loaded on first use, re-tried after a failure, never raising.

    ``module`` replaces ``import pynvml`` (tests pass a stand-in). One session per process is
    enough; ``default_session()`` is shared by ``read_gpus`` and ``NvmlCollector``.
    """

    def __init__(self, module: Any = None, retry_s: float = RETRY_S):
        self._module = module
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._ok = False
        self._next_try = 0.0
        self.error: Optional[str] = None
        self.driver_version: Optional[str] = None

    def get(self) -> Any:
        """The initialised pynvml module, or None (``self.error`` says why)."""
        with self._lock:
            if self._ok:
                return self._module
            now = time.monotonic()
            if now < self._next_try:
                return None
            self._next_try = now + self._retry_s
            mod = self._module
            if mod is None:
                try:
                    mod = importlib.import_module("pynvml")
                except ImportError:
                    self.error = "nvidia-ml-py (pynvml) is not installed"
                    return None
            try:
                mod.nvmlInit()
            except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded...
                self.error = f"NVML did not start: {e}"
                log.debug("NVML unavailable: %s", e)
                return None
            self._module, self._ok, self.error = mod, True, None
            try:
                self.driver_version = _text(mod.nvmlSystemGetDriverVersion())
            except Exception:  # noqa: BLE001
                self.driver_version = None
            return mod

    @property
    def up(self) -> bool:
        return self.get() is not None

    def reset(self, why: str) -> None:
        """Forget the loaded NVML (the driver went away); the next ``get`` loads it again."""
        with self._lock:
            if self._ok:
                try:
                    self._module.nvmlShutdown()
                except Exception:  # noqa: BLE001
                    pass
            self._ok = False
            self._next_try = 0.0
            self.error = why


_default: Optional[NvmlSession] = None
_default_lock = threading.Lock()


def default_session() -> NvmlSession:
    """The process-wide NVML session."""
    global _default
    with _default_lock:
        if _default is None:
            _default = NvmlSession()
        return _default


def _try(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or None when NVML says no (not supported, no permission, GPU lost...)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        return None


def _read_one(nv: Any, index: int) -> dict[str, Any]:
    try:
        h = nv.nvmlDeviceGetHandleByIndex(index)
    except Exception as e:  # noqa: BLE001 - e.g. NVMLError_GpuIsLost (XID 79, fell off the bus)
        return {"index": index, "ok": False, "error": str(e)}
    gpu: dict[str, Any] = {"index": index, "ok": True}
    uuid = _try(nv.nvmlDeviceGetUUID, h)
    name = _try(nv.nvmlDeviceGetName, h)
    gpu["uuid"] = _text(uuid) if uuid is not None else f"gpu-{index}"
    gpu["name"] = _text(name) if name is not None else None
    util = _try(nv.nvmlDeviceGetUtilizationRates, h)
    gpu["utilization_ratio"] = util.gpu / 100.0 if util is not None else None
    gpu["memory_utilization_ratio"] = util.memory / 100.0 if util is not None else None
    mem = _try(nv.nvmlDeviceGetMemoryInfo, h)
    gpu["memory_used_bytes"] = int(mem.used) if mem is not None else None
    gpu["memory_total_bytes"] = int(mem.total) if mem is not None else None
    temp = _try(nv.nvmlDeviceGetTemperature, h, getattr(nv, "NVML_TEMPERATURE_GPU", 0))
    gpu["temperature_celsius"] = float(temp) if temp is not None else None
    power = _try(nv.nvmlDeviceGetPowerUsage, h)  # milliwatts
    gpu["power_watts"] = power / 1000.0 if power is not None else None
    limit = _try(nv.nvmlDeviceGetEnforcedPowerLimit, h)
    gpu["power_limit_watts"] = limit / 1000.0 if limit is not None else None
    volatile = getattr(nv, "NVML_VOLATILE_ECC", 0)
    for key, etype in (("ecc_corrected_total", "NVML_MEMORY_ERROR_TYPE_CORRECTED"),
                       ("ecc_uncorrected_total", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED")):
        v = _try(nv.nvmlDeviceGetTotalEccErrors, h, getattr(nv, etype, 0), volatile)
        gpu[key] = int(v) if v is not None else None
    remap = _try(nv.nvmlDeviceGetRemappedRows, h) if hasattr(nv, "nvmlDeviceGetRemappedRows") else None
    if remap is not None:
        corr, unc, pending, failed = remap
        gpu["remapped_rows"] = {"correctable": int(corr), "uncorrectable": int(unc)}
        gpu["row_remap_pending"] = bool(pending)
        gpu["row_remap_failed"] = bool(failed)
    else:
        gpu["remapped_rows"], gpu["row_remap_pending"], gpu["row_remap_failed"] = None, None, None
    return gpu


def read_gpus(session: Optional[NvmlSession] = None) -> list[dict[str, Any]]:
    """One dict per GPU NVML sees, ``[]`` when NVML is missing. Never raises.

    Keys: ``index``, ``ok`` (False when NVML cannot reach the GPU; ``error`` then says why),
    ``uuid``, ``name``, ``utilization_ratio`` and ``memory_utilization_ratio`` (0..1, over NVML's
    last sample period), ``memory_used_bytes``, ``memory_total_bytes``, ``temperature_celsius``,
    ``power_watts``, ``power_limit_watts``, ``ecc_corrected_total`` and ``ecc_uncorrected_total``
    (since the driver loaded), ``remapped_rows`` ({correctable, uncorrectable}),
    ``row_remap_pending``, ``row_remap_failed``, and, when the XID watcher runs in this process,
    ``xid_errors_total`` and ``last_xid``. A value the GPU does not support is None.
    """
    return _read_gpus(session or default_session()) or []


def _read_gpus(s: NvmlSession) -> Optional[list[dict[str, Any]]]:
    """The GPUs, or None when NVML is missing or stopped answering."""
    nv = s.get()
    if nv is None:
        return None
    try:
        count = int(nv.nvmlDeviceGetCount())
    except Exception as e:  # noqa: BLE001 - the driver went away under us
        s.reset(f"NVML stopped answering: {e}")
        return None
    gpus = [_read_one(nv, i) for i in range(count)]
    watcher = _watchers.get(id(s))
    if watcher is not None:
        for g in gpus:
            if g.get("ok"):
                n, last = watcher.counts(g["uuid"])
                g["xid_errors_total"], g["last_xid"] = n, last
    return gpus


def nvml_status(session: Optional[NvmlSession] = None) -> dict[str, Any]:
    """``{"up": bool, "error": str|None, "driver_version": str|None, "gpus": int}``."""
    s = session or default_session()
    nv = s.get()
    count = 0
    if nv is not None:
        count = _try(nv.nvmlDeviceGetCount) or 0
    return {"up": nv is not None, "error": s.error, "driver_version": s.driver_version, "gpus": int(count)}


class XidWatcher:
    """A daemon thread that counts XID critical errors per GPU from NVML events."""

    def __init__(self, session: NvmlSession, wait_ms: int = 1000):
        self.session = session
        self.wait_ms = wait_ms
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}  # uuid -> [count, last xid]
        self.monitored: set[str] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuqueue-xid-watcher", daemon=True)

    def start(self) -> "XidWatcher":
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def counts(self, uuid: str) -> tuple[int, int]:
        """(XID errors seen, the last XID code or 0)."""
        with self._lock:
            c = self._counts.get(uuid)
            return (c[0], c[1]) if c else (0, 0)

    def _run(self) -> None:
        nv = self.session.get()
        if nv is None:
            self._ready.set()
            return
        try:
            es = nv.nvmlEventSetCreate()
        except Exception as e:  # noqa: BLE001
            log.info("XID errors are not watched: NVML event sets are not available (%s)", e)
            self._ready.set()
            return
        try:
            for i in range(int(nv.nvmlDeviceGetCount())):
                try:
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    uuid = _text(nv.nvmlDeviceGetUUID(h))
                    nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, es)
                    self.monitored.add(uuid)
                except Exception as e:  # noqa: BLE001 - NotSupported on this GPU
                    log.info("XID errors of GPU %d are not watched: %s", i, e)
        except Exception as e:  # noqa: BLE001
            log.info("XID watcher could not list GPUs: %s", e)
        self._ready.set()
        wait = getattr(nv, "nvmlEventSetWait_v2", None) or nv.nvmlEventSetWait
        timeout_cls = getattr(nv, "NVMLError_Timeout", ())
        while not self._stop.is_set() and self.monitored:
            try:
                data = wait(es, self.wait_ms)
            except Exception as e:  # noqa: BLE001
                if timeout_cls and isinstance(e, timeout_cls):
                    continue
                log.warning("XID watcher stops: %s", e)
                break
            try:
                uuid = _text(nv.nvmlDeviceGetUUID(data.device))
            except Exception:  # noqa: BLE001
                uuid = "unknown"
            xid = int(getattr(data, "eventData", 0))
            with self._lock:
                c = self._counts.setdefault(uuid, [0, 0])
                c[0] += 1
                c[1] = xid
            log.error("GPU %s reported XID %d", uuid, xid, extra={"gpu_uuid": uuid, "xid": xid})
        try:
            nv.nvmlEventSetFree(es)
        except Exception:  # noqa: BLE001
            pass


_watchers: dict[int, XidWatcher] = {}
_watchers_lock = threading.Lock()


def ensure_xid_watcher(session: Optional[NvmlSession] = None) -> Optional[XidWatcher]:
    """Start the session's XID watcher once (None while NVML is missing)."""
    s = session or default_session()
    if s.get() is None:
        return None
    with _watchers_lock:
        w = _watchers.get(id(s))
        if w is None:
            w = XidWatcher(s).start()
            _watchers[id(s)] = w
        return w


class NvmlCollector:
    """Prometheus collector of per-GPU NVML readings, read at scrape time.

    Register it in a ``CollectorRegistry``; see ``docs/metrics.md`` for the metrics. With
    ``watch_xid`` (default) the first scrape that finds NVML starts the XID watcher thread.
    """

    def __init__(self, session: Optional[NvmlSession] = None, watch_xid: bool = True):
        self.session = session or default_session()
        self.watch_xid = watch_xid

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only (nothing to call at register time)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            watcher = ensure_xid_watcher(self.session) if self.watch_xid else None
            read = _read_gpus(self.session)
            gpus, up = read or [], read is not None
        except Exception:  # noqa: BLE001 - a scrape must never fail because of NVML
            log.exception("reading NVML failed")
            gpus, up, watcher = [], False, None
        yield GaugeMetricFamily(
            "gpuqueue_nvml_up", "1 when NVML answered this scrape; 0 when it is missing (no NVIDIA "
            "driver or no nvidia-ml-py) or failed", value=1 if up else 0)
        if not up:
            return
        L = ["gpu", "uuid"]
        info = GaugeMetricFamily("gpuqueue_gpu_info", "Always 1: each GPU NVML sees, with its model and driver",
                                 labels=["gpu", "uuid", "name", "driver_version"])
        gpu_up = GaugeMetricFamily("gpuqueue_gpu_up", "1 when NVML can read the GPU, 0 when it cannot "
                                   "(fallen off the bus, lost)", labels=["gpu"])
        util = GaugeMetricFamily("gpuqueue_gpu_utilization_ratio", "Fraction of the last sample period "
                                 "in which a kernel ran on the GPU (DCGM_FI_DEV_GPU_UTIL / 100)", labels=L)
        mutil = GaugeMetricFamily("gpuqueue_gpu_memory_utilization_ratio", "Fraction of the last sample "
                                  "period in which device memory was read or written", labels=L)
        used = GaugeMetricFamily("gpuqueue_gpu_memory_used_bytes", "Device memory in use", labels=L)
        total = GaugeMetricFamily("gpuqueue_gpu_memory_total_bytes", "Device memory in all", labels=L)
        temp = GaugeMetricFamily("gpuqueue_gpu_temperature_celsius", "GPU core temperature", labels=L)
        power = GaugeMetricFamily("gpuqueue_gpu_power_watts", "Power draw", labels=L)
        plimit = GaugeMetricFamily("gpuqueue_gpu_power_limit_watts", "Enforced power limit", labels=L)
        ecc = CounterMetricFamily("gpuqueue_gpu_ecc_errors", "ECC memory errors since the driver "
                                  "loaded (volatile counters), by type corrected/uncorrected", labels=L + ["type"])
        remap = GaugeMetricFamily("gpuqueue_gpu_remapped_rows", "Memory rows remapped because of ECC "
                                  "errors, by type correctable/uncorrectable", labels=L + ["type"])
        remap_pending = GaugeMetricFamily("gpuqueue_gpu_row_remap_pending", "1 when a row remap waits "
                                          "for a GPU reset", labels=L)
        remap_failed = GaugeMetricFamily("gpuqueue_gpu_row_remap_failed", "1 when a row remap failed "
                                         "(the GPU should be replaced)", labels=L)
        xid = CounterMetricFamily("gpuqueue_gpu_xid_errors", "XID critical errors reported by the driver "
                                  "since this process started watching", labels=L)
        last_xid = GaugeMetricFamily("gpuqueue_gpu_last_xid", "Code of the last XID error (0: none "
                                     "seen), as DCGM_FI_DEV_XID_ERRORS", labels=L)
        xid_mon = GaugeMetricFamily("gpuqueue_gpu_xid_monitored", "1 when this process receives the "
                                    "GPU's XID events, 0 when the driver refused", labels=L)
        driver = self.session.driver_version or ""
        for g in gpus:
            idx = str(g["index"])
            gpu_up.add_metric([idx], 1 if g.get("ok") else 0)
            if not g.get("ok"):
                continue
            lv = [idx, g["uuid"]]
            info.add_metric([idx, g["uuid"], g.get("name") or "", driver], 1)
            for gauge, key in ((util, "utilization_ratio"), (mutil, "memory_utilization_ratio"),
                               (used, "memory_used_bytes"), (total, "memory_total_bytes"),
                               (temp, "temperature_celsius"), (power, "power_watts"),
                               (plimit, "power_limit_watts")):
                if g.get(key) is not None:
                    gauge.add_metric(lv, g[key])
            if g.get("ecc_corrected_total") is not None:
                ecc.add_metric(lv + ["corrected"], g["ecc_corrected_total"])
            if g.get("ecc_uncorrected_total") is not None:
                ecc.add_metric(lv + ["uncorrected"], g["ecc_uncorrected_total"])
            if g.get("remapped_rows") is not None:
                for t, n in g["remapped_rows"].items():
                    remap.add_metric(lv + [t], n)
                remap_pending.add_metric(lv, 1 if g["row_remap_pending"] else 0)
                remap_failed.add_metric(lv, 1 if g["row_remap_failed"] else 0)
            if watcher is not None:
                monitored = g["uuid"] in watcher.monitored
                xid_mon.add_metric(lv, 1 if monitored else 0)
                if monitored:
                    n, last = watcher.counts(g["uuid"])
                    xid.add_metric(lv, n)
                    last_xid.add_metric(lv, last)
        for fam in (info, gpu_up, util, mutil, used, total, temp, power, plimit, ecc, remap,
                    remap_pending, remap_failed, xid, last_xid, xid_mon):
            if fam.samples:
                yield fam


def main() -> None:
    """``python -m gpuqueue.observability.nvml``: print what NVML sees, as JSON."""
    import json

    print(json.dumps({"status": nvml_status(), "gpus": read_gpus()}, indent=2))


if __name__ == "__main__":
    main()
