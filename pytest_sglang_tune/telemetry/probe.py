"""The sampling process: ``python -m pytest_sglang_tune.telemetry.probe --uuids GPU-a,GPU-b --interval 0.5``.

It runs beside the load generator, never inside it: its own process, so its NVML calls and its Python work take
nothing from the load generator's event loop (or its GIL). It prints JSON lines on stdout: first
``{"ready": true, "gpus": [{"uuid", "name", "index"}]}`` (or ``{"error": "..."}`` and exit code 3 when NVML does
not load or a UUID is unknown), then one ``{"t": epoch seconds, "rows": [sample, ...]}`` per round, on a fixed
schedule (no drift), until SIGTERM. ``--exec CMD...`` instead runs ``CMD`` (the ``nvidia-smi`` loop) with this
stdout until SIGTERM. Either way it exits when the process that started it is gone (``--parent``, checked every
round), so a killed pytest process leaves no sampler behind. Only the standard library and ``pynvml`` are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

MIB = 2**20


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:  # NVML_ERROR_NOT_SUPPORTED (e.g. power on some boards): the value is unknown
        return None


def _reasons_getter(pynvml: Any) -> Any:
    """``nvmlDeviceGetCurrentClocksEventReasons`` (driver 535+ name), else the deprecated ``...ThrottleReasons``."""
    return (getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))


def read_round(pynvml: Any, handles: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """One sample of every GPU in ``handles`` ((uuid, handle) pairs)."""
    reasons = _reasons_getter(pynvml)
    rows = []
    for uuid, h in handles:
        util = _call(pynvml.nvmlDeviceGetUtilizationRates, h)
        mem = _call(pynvml.nvmlDeviceGetMemoryInfo, h)
        power = _call(pynvml.nvmlDeviceGetPowerUsage, h)
        rows.append({
            "uuid": uuid,
            "util_pct": None if util is None else int(util.gpu),
            "mem_used_mib": None if mem is None else round(int(mem.used) / MIB, 1),
            "mem_total_mib": None if mem is None else int(mem.total) // MIB,
            "power_w": None if power is None else round(int(power) / 1000.0, 2),   # NVML: milliwatts
            "sm_clock_mhz": _call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
            "temp_c": _call(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
            "reasons": None if reasons is None else _call(reasons, h),
        })
    return rows


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _alive(parent: int) -> bool:
    """The starting process still runs (an orphan is re-parented, so its parent id changes)."""
    return os.getppid() == parent


def _supervise(cmd: list[str], parent: int, stop: dict[str, bool]) -> int:
    """Run ``cmd`` with this process's stdout until SIGTERM, the parent's end, or the command's own end."""
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    except OSError as exc:
        _emit({"error": f"cannot run {cmd[0]}: {exc}"})
        return 3
    try:
        while not stop["now"] and _alive(parent) and child.poll() is None:
            time.sleep(0.25)
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pytest_sglang_tune.telemetry.probe")
    ap.add_argument("--uuids", required=True, help="comma-separated GPU UUIDs")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between rounds (at least 0.5)")
    ap.add_argument("--rounds", type=int, default=0, help="stop after this many rounds (0: until SIGTERM)")
    ap.add_argument("--parent", type=int, default=os.getppid(), help="exit when this process is gone")
    ap.add_argument("--exec", nargs=argparse.REMAINDER, default=None, help="run this command instead of NVML")
    args = ap.parse_args(argv)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    if args.exec:
        return _supervise(args.exec, args.parent, stop)
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        _emit({"error": f"NVML does not load: {type(exc).__name__}: {exc}"})
        return 3
    try:
        handles = []
        gpus = []
        for uuid in [u for u in args.uuids.split(",") if u]:
            try:
                h = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception as exc:
                _emit({"error": f"NVML has no GPU {uuid}: {exc}"})
                return 3
            handles.append((uuid, h))
            name = _call(pynvml.nvmlDeviceGetName, h)
            gpus.append({"uuid": uuid, "name": name.decode() if isinstance(name, bytes) else name,
                         "index": _call(pynvml.nvmlDeviceGetIndex, h)})
        _emit({"ready": True, "gpus": gpus})
        interval = max(0.5, args.interval)  # at most 2 Hz
        start = time.monotonic()
        k = 0
        while not stop["now"] and _alive(args.parent):
            _emit({"t": time.time(), "rows": read_round(pynvml, handles)})
            k += 1
            if args.rounds and k >= args.rounds:
                break
            delay = start + k * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


if __name__ == "__main__":
    raise SystemExit(main())
