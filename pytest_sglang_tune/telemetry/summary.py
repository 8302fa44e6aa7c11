"""GPU telemetry samples → one point's summary (pure): mean/max per GPU, throttle reasons, warnings, a compact series.

A sample is one GPU at one time: ``{"t": epoch seconds, "uuid", "util_pct", "mem_used_mib", "mem_total_mib",
"power_w", "sm_clock_mhz", "temp_c", "reasons"}`` (a value the GPU does not report is None; ``reasons`` is NVML's
clocks-event reasons bitmask, formerly "throttle reasons", the same bits DCGM exports as
``DCGM_FI_DEV_CLOCKS_EVENT_REASONS``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# NVML's nvmlClocksEventReason* / nvmlClocksThrottleReason* bits (NVML API reference, "NvmlClocksEventReasons";
# nvidia-ml-py 13.615.71 pynvml.py). Unknown bits are named by their value.
THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
THERMAL = frozenset({"sw_thermal_slowdown", "hw_thermal_slowdown"})
POWER = frozenset({"sw_power_cap", "hw_power_brake_slowdown", "board_limit"})
SLOWDOWN = frozenset({"hw_slowdown", "reliability"})  # HW slowdown: thermal or power brake, by the hardware
UNTRUSTED = THERMAL | POWER | SLOWDOWN
METRICS = ("util_pct", "mem_used_mib", "power_w", "sm_clock_mhz", "temp_c")
MAX_SERIES_POINTS = 120


def throttle_names(mask: int) -> list[str]:
    """``0x24`` → ``["sw_power_cap", "sw_thermal_slowdown"]`` (empty for 0)."""
    names = [name for bit, name in THROTTLE_BITS if mask & bit]
    rest = mask & ~sum(bit for bit, _ in THROTTLE_BITS)
    if rest:
        names.append(f"unknown_{rest:#x}")
    return names


def _stats(values: Iterable[float | None]) -> dict[str, float] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"mean": round(statistics.fmean(vals), 2), "max": round(max(vals), 2)}


def _bucket(values: Sequence[float | None], size: int) -> list[float | None]:
    """Means of consecutive groups so at most ``size`` values remain (None where a group has no value)."""
    n = len(values)
    if n <= size:
        return [None if v is None else round(float(v), 1) for v in values]
    out: list[float | None] = []
    for k in range(size):
        group = [v for v in values[k * n // size:(k + 1) * n // size] if v is not None]
        out.append(round(statistics.fmean(group), 1) if group else None)
    return out


def _kind(names: Iterable[str]) -> str:
    s = set(names)
    parts = []
    if s & THERMAL:
        parts.append("thermally throttled")
    if s & POWER:
        parts.append("power capped")
    if s & SLOWDOWN:
        parts.append("slowed down by the hardware")
    return " and ".join(parts)


def summarize(samples: Sequence[Mapping[str, Any]], *, source: str, interval_s: float,
              names: Mapping[str, str] | None = None, order: Sequence[str] = (),
              warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The point's telemetry: ``{source, interval_s, samples, duration_s, gpus: [...], warnings, series}``.

    ``gpus`` lists, per GPU (in ``order``, then as first seen), ``util_pct``, ``mem_used_mib``, ``power_w``,
    ``sm_clock_mhz``, ``temp_c`` as ``{mean, max}`` (None when never reported), ``mem_total_mib``, ``throttle``
    (every reason seen) and ``throttle_samples`` (how many samples had each). A GPU thermally or power throttled
    in any sample gets a warning: its clocks were lowered, so the point does not show what it can do.
    ``series`` keeps at most ``MAX_SERIES_POINTS`` values per metric (bucket means): ``{uuid: {t: [s since the
    first sample], util_pct: [...], ...}}``."""
    by_gpu: dict[str, list[Mapping[str, Any]]] = {u: [] for u in order}
    for s in sorted(samples, key=lambda s: float(s["t"])):
        by_gpu.setdefault(str(s["uuid"]), []).append(s)
    t0 = min((float(s["t"]) for s in samples), default=0.0)
    t1 = max((float(s["t"]) for s in samples), default=0.0)
    gpus, series, notes = [], {}, list(warnings)
    for uuid, rows in by_gpu.items():
        counts: dict[str, int] = {}
        for r in rows:
            for name in throttle_names(int(r.get("reasons") or 0)):
                counts[name] = counts.get(name, 0) + 1
        entry: dict[str, Any] = {"uuid": uuid, "name": (names or {}).get(uuid) or next(
            (str(r["name"]) for r in rows if r.get("name")), ""), "samples": len(rows)}
        for m in METRICS:
            entry[m] = _stats(r.get(m) for r in rows)
        totals = [r["mem_total_mib"] for r in rows if r.get("mem_total_mib") is not None]
        entry["mem_total_mib"] = max(totals) if totals else None
        entry["throttle"] = [n for _, n in THROTTLE_BITS if n in counts] + sorted(
            n for n in counts if n.startswith("unknown_"))
        entry["throttle_samples"] = {n: counts[n] for n in entry["throttle"]}
        gpus.append(entry)
        bad = [n for n in entry["throttle"] if n in UNTRUSTED]
        if bad:
            detail = ", ".join(f"{n} in {counts[n]} of {len(rows)} samples" for n in bad)
            notes.append(f"GPU {uuid} ({entry['name'] or 'unnamed'}) was {_kind(bad)} during the point ({detail}): "
                         "its clocks were lowered, so this point does not show what the GPU can do")
        if not rows:
            notes.append(f"no telemetry sample of GPU {uuid} during the point ({source})")
        size = MAX_SERIES_POINTS
        series[uuid] = {"t": _bucket([float(r["t"]) - t0 for r in rows], size),
                        **{m: _bucket([r.get(m) for r in rows], size) for m in METRICS}}
    return {"source": source, "interval_s": round(interval_s, 3),
            "samples": max((len(r) for r in by_gpu.values()), default=0), "duration_s": round(t1 - t0, 3),
            "gpus": gpus, "warnings": notes, "series": series}


def empty_summary(source: str, interval_s: float, warning: str) -> dict[str, Any]:
    """A summary without samples, saying why (telemetry never fails a point)."""
    return summarize([], source=source, interval_s=interval_s, warnings=[warning])
