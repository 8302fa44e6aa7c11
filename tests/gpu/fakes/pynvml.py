"""A fake ``pynvml`` (the module of NVIDIA's ``nvidia-ml-py``) for tests: GPUs described by a JSON file.

It is put on ``sys.path`` (or ``PYTHONPATH``, for subprocesses) in place of the real module, so the code under
test runs its real NVML path. It never imports ``pytest_sglang_tune``. Its rules follow nvidia-ml-py 13.615.71's
``pynvml.py`` and NVML's API reference (docs.nvidia.com/deploy/nvml-api):

* ``nvmlInit``/``nvmlShutdown`` are reference counted; any other call before ``nvmlInit`` raises
  ``NVMLError_Uninitialized``; without a GPU description the library is missing (``NVMLError_LibraryNotFound``,
  as ``_LoadNvmlLibrary`` raises when ``libnvidia-ml.so.1`` cannot be loaded).
* handles come from ``nvmlDeviceGetHandleByIndex`` (an index out of range: ``NVML_ERROR_INVALID_ARGUMENT``) or
  ``nvmlDeviceGetHandleByUUID`` (the full UUID only; unknown: ``NVML_ERROR_NOT_FOUND``); indices are NVML's
  (PCI bus order).
* strings come back as ``str`` (``convertStrBytes``); ``nvmlDeviceGetMemoryInfo`` returns bytes in
  ``.total/.free/.used``; ``nvmlDeviceGetUtilizationRates`` ``.gpu/.memory`` in percent; ``nvmlDeviceGetPowerUsage``
  milliwatts; ``nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM)`` MHz; ``nvmlDeviceGetTemperature(h,
  NVML_TEMPERATURE_GPU)`` degrees C; ``nvmlDeviceGetCurrentClocksEventReasons`` (and its deprecated name
  ``...ThrottleReasons``) the reasons bitmask; ``nvmlSystemGetCudaDriverVersion`` an int such as 12040.

The description (``FAKE_NVML_SPEC``, a JSON file) is ``{"driver": "550.54.15", "cuda": 12040, "devices": [{"uuid",
"name", "pci_bus_id", "memory_total_mib", "series": {"util": [...], "mem_used_mib": [...], "power_w": [...],
"sm_clock_mhz": [...], "temp_c": [...], "reasons": [...]}}]}``. Every getter keeps a call counter per device and
returns ``series[k % len]`` on its k-th call, so a sampler that calls each getter once per sample sees the
series in order. ``FAKE_NVML_FAIL`` names getters that raise ``NVML_ERROR_NOT_SUPPORTED``.
"""

import json
import os
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2

nvmlClocksEventReasonGpuIdle = 0x1
nvmlClocksEventReasonApplicationsClocksSetting = 0x2
nvmlClocksEventReasonSwPowerCap = 0x4
nvmlClocksThrottleReasonHwSlowdown = 0x8
nvmlClocksEventReasonSyncBoost = 0x10
nvmlClocksEventReasonSwThermalSlowdown = 0x20
nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
nvmlClocksThrottleReasonHwPowerBrakeSlowdown = 0x80
nvmlClocksEventReasonDisplayClockSetting = 0x100

_STRINGS = {NVML_ERROR_UNINITIALIZED: "Uninitialized", NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
            NVML_ERROR_NOT_SUPPORTED: "Not Supported", NVML_ERROR_NOT_FOUND: "Not Found",
            NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found"}


class NVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return _STRINGS.get(self.value, f"Unknown Error {self.value}")


class NVMLError_Uninitialized(NVMLError):
    def __init__(self):
        super().__init__(NVML_ERROR_UNINITIALIZED)


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self):
        super().__init__(NVML_ERROR_LIBRARY_NOT_FOUND)


_state = {"refs": 0, "spec": None, "calls": {}}


def _spec():
    if _state["refs"] <= 0:
        raise NVMLError_Uninitialized()
    return _state["spec"]


def nvmlInit():
    path = os.environ.get("FAKE_NVML_SPEC")
    if not path or not os.path.exists(path):
        raise NVMLError_LibraryNotFound()
    with open(path) as fh:
        _state["spec"] = json.load(fh)
    _state["refs"] += 1


def nvmlShutdown():
    if _state["refs"] <= 0:
        raise NVMLError_Uninitialized()
    _state["refs"] -= 1


class _Handle:
    def __init__(self, index):
        self.index = index


def nvmlDeviceGetCount():
    return len(_spec()["devices"])


def nvmlDeviceGetHandleByIndex(index):
    if not 0 <= int(index) < len(_spec()["devices"]):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _Handle(int(index))


def nvmlDeviceGetHandleByUUID(uuid):
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    for i, dev in enumerate(_spec()["devices"]):
        if dev["uuid"] == uuid:
            return _Handle(i)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def _dev(handle):
    if not isinstance(handle, _Handle):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _spec()["devices"][handle.index]


def _next(handle, key, default):
    dev = _dev(handle)
    if key in os.environ.get("FAKE_NVML_FAIL", "").split(","):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    series = (dev.get("series") or {}).get(key) or [default]
    calls = _state["calls"]
    k = calls.get((handle.index, key), 0)
    calls[(handle.index, key)] = k + 1
    return series[k % len(series)]


def nvmlDeviceGetIndex(handle):
    _dev(handle)
    return handle.index


def nvmlDeviceGetUUID(handle):
    return _dev(handle)["uuid"]


def nvmlDeviceGetName(handle):
    return _dev(handle).get("name", "NVIDIA H200")


def nvmlDeviceGetPciInfo(handle):
    return SimpleNamespace(busId=_dev(handle).get("pci_bus_id", f"00000000:{handle.index:02X}:00.0"))


def nvmlDeviceGetMemoryInfo(handle, version=None):
    total = int(_dev(handle).get("memory_total_mib", 143771)) * 2**20
    used = int(_next(handle, "mem_used_mib", 0)) * 2**20
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=int(_next(handle, "util", 0)), memory=0)


def nvmlDeviceGetPowerUsage(handle):
    return round(float(_next(handle, "power_w", 70.0)) * 1000)


def nvmlDeviceGetClockInfo(handle, type):
    if type != NVML_CLOCK_SM:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return int(_next(handle, "sm_clock_mhz", 345))


def nvmlDeviceGetTemperature(handle, sensor):
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return int(_next(handle, "temp_c", 30))


def nvmlDeviceGetCurrentClocksEventReasons(handle):
    return int(_next(handle, "reasons", 0))


nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons


def nvmlSystemGetDriverVersion():
    return str(_spec().get("driver", "550.54.15"))


def nvmlSystemGetCudaDriverVersion():
    return int(_spec().get("cuda", 12040))
