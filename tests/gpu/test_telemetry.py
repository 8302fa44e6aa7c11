"""telemetry/: GPU samples during a point, from a fake NVML, a fake nvidia-smi and a fake Prometheus (DCGM)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakeprom import FakePrometheus
from gpukit import uuid_of

from pytest_sglang_tune.telemetry import dcgm_sampler, gpu_sampler, summarize, throttle_names
from pytest_sglang_tune.telemetry.dcgm import DcgmSampler
from pytest_sglang_tune.telemetry.sampler import GpuSampler


@pytest.mark.parametrize(("mask", "names"), [
    (0, []),
    (0x1, ["gpu_idle"]),
    (0x4, ["sw_power_cap"]),
    (0x24, ["sw_power_cap", "sw_thermal_slowdown"]),
    (0x40 | 0x80, ["hw_thermal_slowdown", "hw_power_brake_slowdown"]),
    (0x8 | 0x1000, ["hw_slowdown", "unknown_0x1000"]),
])
def test_throttle_names(mask: int, names: list[str]) -> None:
    assert throttle_names(mask) == names


def _row(t: float, uuid: str = "GPU-a", **values: Any) -> dict[str, Any]:
    return {"t": t, "uuid": uuid, "util_pct": None, "mem_used_mib": None, "mem_total_mib": None, "power_w": None,
            "sm_clock_mhz": None, "temp_c": None, "reasons": 0, **values}


def test_summary_mean_max_and_throttle_warning() -> None:
    rows = [_row(100.0, util_pct=10, power_w=100.0, temp_c=40, mem_used_mib=1000, mem_total_mib=143771, reasons=1),
            _row(100.5, util_pct=90, power_w=500.0, temp_c=60, mem_used_mib=3000, mem_total_mib=143771, reasons=0x4),
            _row(101.0, util_pct=50, power_w=None, temp_c=80, mem_used_mib=2000, mem_total_mib=143771, reasons=0x44)]
    s = summarize(rows, source="nvml", interval_s=0.5, names={"GPU-a": "NVIDIA H200"}, order=["GPU-a", "GPU-b"])
    (a, b) = s["gpus"]
    assert (s["samples"], s["duration_s"], s["source"]) == (3, 1.0, "nvml")
    assert a["util_pct"] == {"mean": 50.0, "max": 90.0}
    assert a["power_w"] == {"mean": 300.0, "max": 500.0}  # the unreported sample is left out, not counted as 0
    assert a["temp_c"] == {"mean": 60.0, "max": 80.0} and a["mem_total_mib"] == 143771
    assert a["sm_clock_mhz"] is None
    assert a["throttle"] == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    assert a["throttle_samples"] == {"gpu_idle": 1, "sw_power_cap": 2, "hw_thermal_slowdown": 1}
    assert s["warnings"][0] == (
        "GPU GPU-a (NVIDIA H200) was thermally throttled and power capped during the point (sw_power_cap in 2 of 3 "
        "samples, hw_thermal_slowdown in 1 of 3 samples): its clocks were lowered, so this point does not show "
        "what the GPU can do")
    assert b["samples"] == 0 and s["warnings"][1] == "no telemetry sample of GPU GPU-b during the point (nvml)"
    assert s["series"]["GPU-a"] == {"t": [0.0, 0.5, 1.0], "util_pct": [10.0, 90.0, 50.0],
                                    "mem_used_mib": [1000.0, 3000.0, 2000.0], "power_w": [100.0, 500.0, None],
                                    "sm_clock_mhz": [None, None, None], "temp_c": [40.0, 60.0, 80.0]}


def test_idle_and_sync_boost_are_no_reason_to_distrust_a_point() -> None:
    rows = [_row(float(i), reasons=0x1 | 0x10) for i in range(3)]
    assert summarize(rows, source="nvml", interval_s=0.5)["warnings"] == []


def test_long_series_are_bucketed_to_a_compact_size() -> None:
    rows = [_row(i * 0.5, util_pct=i % 100) for i in range(1000)]
    s = summarize(rows, source="nvml", interval_s=0.5)
    series = s["series"]["GPU-a"]
    assert len(series["t"]) == len(series["util_pct"]) == 120
    assert s["gpus"][0]["util_pct"] == {"mean": 49.5, "max": 99.0}  # the summary uses every sample


# --- a sampling process against the fake NVML / fake nvidia-smi ----------------------------------------------

SERIES = {"util": [10, 40, 90, 60], "mem_used_mib": [1000, 2000, 4000, 3000], "power_w": [120.5, 300.25, 650.0, 400.0],
          "sm_clock_mhz": [1980, 1755, 1410, 1980], "temp_c": [35, 48, 71, 66], "reasons": [0, 0x4, 0x40, 0]}
KEYS = {"util_pct": "util", "mem_used_mib": "mem_used_mib", "power_w": "power_w", "sm_clock_mhz": "sm_clock_mhz",
        "temp_c": "temp_c"}


def _expected(n: int, key: str) -> dict[str, float]:
    vals = [SERIES[key][k % 4] for k in range(n)]
    return {"mean": round(statistics.fmean(vals), 2), "max": round(max(vals), 2)}


def _sample_for(sampler: GpuSampler, seconds: float) -> dict[str, Any]:
    threads = threading.active_count()
    sampler.start()
    time.sleep(seconds)
    assert threading.active_count() == threads  # nothing samples inside this process
    return sampler.stop()


@pytest.mark.parametrize("inventory", ["fake_nvml", "fake_smi"])
def test_sampler_process_follows_a_varying_series(gpu_host: Callable[..., Any], inventory: str,
                                                  request: pytest.FixtureRequest) -> None:
    gpu_host(8, series={5: SERIES, 3: {"util": [100]}})
    request.getfixturevalue(inventory)
    s = _sample_for(GpuSampler([uuid_of(5), uuid_of(3)], interval_s=0.5), 2.3)
    assert s["source"] == ("nvml" if inventory == "fake_nvml" else "nvidia-smi")
    g5, g3 = s["gpus"]
    assert (g5["uuid"], g3["uuid"], g5["name"]) == (uuid_of(5), uuid_of(3), "NVIDIA H200")
    n = g5["samples"]
    assert 4 <= n <= 7, n   # 2 Hz for ~2.3 s (the interval is never below 0.5 s)
    for key, spec_key in KEYS.items():
        assert g5[key] == _expected(n, spec_key), key
    assert g3["util_pct"] == {"mean": 100.0, "max": 100.0} and g5["mem_total_mib"] == 143771
    assert g5["throttle"] == ["sw_power_cap", "hw_thermal_slowdown"]
    assert any(w.startswith(f"GPU {uuid_of(5)} (NVIDIA H200) was thermally throttled and power capped")
               for w in s["warnings"])
    assert len(s["series"][uuid_of(5)]["util_pct"]) == n


def test_interval_is_never_below_half_a_second() -> None:
    assert GpuSampler(["GPU-a"], interval_s=0.1).interval_s == 0.5


def test_older_nvidia_smi_with_throttle_reasons_field(gpu_host: Callable[..., Any], fake_smi: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SMI_OLD", "1")  # before driver 535: clocks_throttle_reasons.active only
    gpu_host(2, series={1: {"reasons": [0x20]}})
    s = _sample_for(GpuSampler([uuid_of(1)]), 1.2)
    assert s["source"] == "nvidia-smi" and s["gpus"][0]["throttle"] == ["sw_thermal_slowdown"]


@pytest.mark.usefixtures("fake_nvml")
def test_unknown_gpu_is_a_warning_not_an_error(gpu_host: Callable[..., Any]) -> None:
    gpu_host(2)
    s = _sample_for(GpuSampler(["GPU-ffffffff-0000-0000-0000-000000000000"], source="nvml"), 0.1)
    assert s["source"] == "none" and s["gpus"] == []
    assert s["warnings"] == ["no GPU telemetry: NVML: NVML has no GPU GPU-ffffffff-0000-0000-0000-000000000000: "
                             "Not Found"]


def test_backends_pick_their_sampler() -> None:
    from pytest_sglang_tune.backends.base import Backend
    from pytest_sglang_tune.backends.local import LocalBackend
    from pytest_sglang_tune.backends.ome import OmeBackend
    from pytest_sglang_tune.backends.sim import SimBackend

    class Dep:
        def __init__(self, info: dict[str, object]) -> None:
            self.info = info

    assert gpu_sampler([0]) is None                                       # positions only: no real GPU handed on
    assert isinstance(gpu_sampler([uuid_of(1)]), GpuSampler)
    assert dcgm_sampler(None, {"pod": "p"}) is None                       # no --sglang-prometheus-url
    assert isinstance(dcgm_sampler("http://x", {"pod": "p", "namespace": "n"}), DcgmSampler)
    assert Backend().telemetry_sampler(Dep({"gpus_used": [uuid_of(0)]})) is None  # type: ignore[arg-type]
    local = LocalBackend(gpus=1)
    assert isinstance(local.telemetry_sampler(Dep({"gpus_used": [uuid_of(0)]})), GpuSampler)  # type: ignore[arg-type]
    assert SimBackend(gpus=2).telemetry_sampler(Dep({"gpus_used": [0, 1]})) is None  # type: ignore[arg-type]
    ome = OmeBackend(prometheus_url="http://prom:9090")
    assert isinstance(ome.telemetry_sampler(Dep({"pod": "p", "namespace": "n"})), DcgmSampler)  # type: ignore[arg-type]


# --- DCGM through Prometheus ----------------------------------------------------------------------------------

@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    p = FakePrometheus()
    yield p
    p.close()


def _dcgm(prom: FakePrometheus, t0: float, pod_label: str = "pod", reasons: str | None = None) -> None:
    for g, uuid in ((0, uuid_of(2)), (1, uuid_of(6))):
        labels = {"gpu": str(g), "UUID": uuid, "modelName": "NVIDIA H200", "Hostname": "node-1",
                  pod_label: "isvc-abc-engine-0", pod_label.replace("pod", "namespace"): "tune",
                  "container": "ome-container"}
        stamps = [t0 + 0.05 * (k + 1) for k in range(4)]
        for name, vals in (("DCGM_FI_DEV_GPU_UTIL", [20, 80, 100, 60]), ("DCGM_FI_DEV_FB_USED", [70000] * 4),
                           ("DCGM_FI_DEV_FB_FREE", [73771] * 4), ("DCGM_FI_DEV_POWER_USAGE", [250, 690, 700, 400]),
                           ("DCGM_FI_DEV_SM_CLOCK", [1980, 1980, 1500, 1700]),
                           ("DCGM_FI_DEV_GPU_TEMP", [50, 60, 85, 70])):
            prom.add(name, labels, list(zip(stamps, [v + g for v in vals], strict=True)))
        if reasons:
            prom.add(reasons, labels, list(zip(stamps, [0, 0x4 if g else 0, 0, 0], strict=True)))
    # another pod's GPU on the same node must not count
    prom.add("DCGM_FI_DEV_GPU_UTIL", {"UUID": uuid_of(7), "pod": "other", "namespace": "tune"}, [(t0 + 0.1, 1.0)])


@pytest.mark.parametrize(("pod_label", "reasons"), [
    ("pod", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"),
    ("exported_pod", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"),   # a Prometheus that renamed clashing labels; old DCGM
])
def test_dcgm_from_prometheus_keyed_by_pod(prom: FakePrometheus, pod_label: str, reasons: str) -> None:
    sampler = DcgmSampler(prom.url, pod="isvc-abc-engine-0", namespace="tune")
    sampler.start()
    _dcgm(prom, sampler._t0, pod_label, reasons)
    time.sleep(0.3)
    s = sampler.stop()
    assert s["source"] == "dcgm" and s["samples"] == 4 and s["interval_s"] == pytest.approx(0.05, abs=1e-3)
    g2, g6 = sorted(s["gpus"], key=lambda g: g["uuid"])
    assert g2["uuid"] == uuid_of(2) and g2["name"] == "NVIDIA H200"
    assert g2["util_pct"] == {"mean": 65.0, "max": 100.0} and g6["util_pct"] == {"mean": 66.0, "max": 101.0}
    assert g2["power_w"] == {"mean": 510.0, "max": 700.0} and g2["temp_c"] == {"mean": 66.25, "max": 85.0}
    assert g2["mem_used_mib"] == {"mean": 70000.0, "max": 70000.0} and g2["mem_total_mib"] == 143771.0
    assert g2["sm_clock_mhz"] == {"mean": 1790.0, "max": 1980.0}
    assert g2["throttle"] == [] and g6["throttle"] == ["sw_power_cap"]
    assert [w.split(" was ")[0] for w in s["warnings"]] == [f"GPU {uuid_of(6)} (NVIDIA H200)"]
    assert all("[" in q and "s]" in q for q in prom.queries)  # range vectors: read once, after the point


def test_dcgm_without_throttle_field_says_so(prom: FakePrometheus) -> None:
    sampler = DcgmSampler(prom.url, pod="isvc-abc-engine-0", namespace="tune")
    sampler.start()
    _dcgm(prom, sampler._t0)
    time.sleep(0.3)
    s = sampler.stop()
    assert len(s["gpus"]) == 2
    assert s["warnings"] == ["DCGM: no DCGM_FI_DEV_CLOCKS_EVENT_REASONS or DCGM_FI_DEV_CLOCK_THROTTLE_REASONS for "
                             "pod isvc-abc-engine-0: throttling is not visible (add the field to the exporter's "
                             "counters)"]


def test_dcgm_failures_are_warnings(prom: FakePrometheus) -> None:
    sampler = DcgmSampler(prom.url, pod="nobody")
    sampler.start()
    s = sampler.stop()
    assert s["gpus"] == [] and s["warnings"][0].startswith("no DCGM sample for pod nobody in Prometheus at")
    gone = DcgmSampler("http://127.0.0.1:9", pod="p")
    gone.start()
    s = gone.stop()
    assert s["warnings"][0].startswith("no GPU telemetry: Prometheus at http://127.0.0.1:9 did not answer")
    bad = DcgmSampler(prom.url, pod='p"} or vector(1) #')   # quoted into the selector, never interpreted
    bad.start()
    assert bad.stop()["gpus"] == []


KILLED_PARENT = """
import sys, time
from pytest_sglang_tune.telemetry.sampler import GpuSampler
s = GpuSampler([sys.argv[1]])
s.start()
print(s.used, s._proc.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("inventory", ["fake_nvml", "fake_smi"])
def test_a_killed_pytest_process_leaves_no_sampler_behind(gpu_host: Callable[..., Any], inventory: str,
                                                          request: pytest.FixtureRequest) -> None:
    import signal
    import subprocess
    import sys

    import psutil

    gpu_host(2)
    request.getfixturevalue(inventory)
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, uuid_of(1)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    used, pid = parent.stdout.readline().split()
    probe = psutil.Process(int(pid))
    family = [probe, *probe.children(recursive=True)]
    assert used == ("nvml" if inventory == "fake_nvml" else "nvidia-smi") and len(family) == (1 if used == "nvml"
                                                                                            else 2)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _gone, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
