"""GPU power and device facts through NVML (``nvidia-ml-py``), absent NVML handled quietly.

Mean power over a measured point comes from the GPU's cumulative energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules, Volta and later): the energy difference
over the point's timed loop divided by its wall time. Where the counter is not supported, a
background thread samples ``nvmlDeviceGetPowerUsage`` every 20 ms and averages the samples
(that reading is itself a short moving average on recent GPUs, so very short points read
low). With no NVML at all (no driver, CPU runs) every power value is NaN and ``method`` says
``none``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any NVML failure (no driver, no device) means no NVML
        return None
    return pynvml


class PowerMeter:
    """Mean GPU power over a bracketed interval: ``start()`` ... ``stop() -> watts``."""

    def __init__(self, device_index: int | None, pci_bus_id: str | None = None) -> None:
        self._nv: Any = _nvml() if device_index is not None else None
        self._handle: Any = None
        self.method = "none"
        if self._nv is None:
            return
        try:
            if pci_bus_id:
                self._handle = self._nv.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
            else:
                self._handle = self._nv.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:  # noqa: BLE001
            try:
                self._handle = self._nv.nvmlDeviceGetHandleByIndex(device_index)
            except Exception:  # noqa: BLE001
                self._nv = None
                return
        try:
            self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self.method = "nvml_energy_counter"
        except Exception:  # noqa: BLE001
            try:
                self._nv.nvmlDeviceGetPowerUsage(self._handle)
                self.method = "nvml_power_samples_20ms"
            except Exception:  # noqa: BLE001
                self._nv = None
        self._t0 = 0.0
        self._e0 = 0
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        """Whether :meth:`stop` returns real readings."""
        return self.method != "none"

    def start(self) -> None:
        """Begin an interval (call after synchronising the device)."""
        if not self.available:
            return
        self._t0 = time.perf_counter()
        if self.method == "nvml_energy_counter":
            self._e0 = int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            return
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self._samples.append(self._nv.nvmlDeviceGetPowerUsage(self._handle) / 1000.0)
            except Exception:  # noqa: BLE001
                return
            self._stop.wait(0.02)

    def stop(self) -> float:
        """End the interval (call after synchronising); mean power in watts, NaN if unknown."""
        if not self.available:
            return math.nan
        elapsed = time.perf_counter() - self._t0
        if self.method == "nvml_energy_counter":
            e1 = int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            return (e1 - self._e0) / 1000.0 / elapsed if elapsed > 0 else math.nan
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return float(sum(self._samples) / len(self._samples)) if self._samples else math.nan

    def device_facts(self) -> dict[str, Any]:
        """Driver, clocks (now and maximum), power limit, temperature and persistence mode, as far
        as NVML answers; empty when NVML is absent."""
        if self._nv is None or self._handle is None:
            return {}
        nv, h = self._nv, self._handle
        facts: dict[str, Any] = {}

        def put(key: str, fn: Any, *args: Any) -> None:
            try:
                facts[key] = fn(h, *args)
            except Exception:  # noqa: BLE001 - a field NVML does not support is left out
                return

        with contextlib.suppress(Exception):
            drv = nv.nvmlSystemGetDriverVersion()
            facts["driver_version"] = drv.decode() if isinstance(drv, bytes) else drv
        put("sm_clock_mhz", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
        put("mem_clock_mhz", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM)
        put("max_sm_clock_mhz", nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_SM)
        put("max_mem_clock_mhz", nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_MEM)
        put("temperature_c", nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
        with contextlib.suppress(Exception):
            facts["power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
        with contextlib.suppress(Exception):
            facts["power_now_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
        with contextlib.suppress(Exception):
            facts["persistence_mode"] = int(nv.nvmlDeviceGetPersistenceMode(h))
        return facts
