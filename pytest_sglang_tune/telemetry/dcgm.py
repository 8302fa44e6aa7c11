"""GPU telemetry of an ``ome`` pod from NVIDIA's DCGM exporter, read through Prometheus (``--sglang-prometheus-url``).

Nothing is polled during the point: ``stop()`` asks Prometheus's instant-query API (``GET /api/v1/query``) once
per metric for the range vector ``METRIC{pod="…",namespace="…"}[<point>s]`` at the point's end, which returns
every sample the exporter's scrapes stored during the point. The exporter labels a GPU's series with ``UUID``,
``gpu``, ``modelName`` and, with its Kubernetes pod mapping, ``pod``/``namespace``/``container`` (older exporters:
``pod_name``/``pod_namespace``; a Prometheus that does not honour the exporter's labels renames a clash to
``exported_pod``/``exported_namespace``): each spelling is tried in turn.

Metrics (dcgm-exporter ``etc/default-counters.csv``): ``DCGM_FI_DEV_GPU_UTIL`` (%), ``DCGM_FI_DEV_FB_USED`` and
``DCGM_FI_DEV_FB_FREE`` (MiB; total = used + free), ``DCGM_FI_DEV_POWER_USAGE`` (W), ``DCGM_FI_DEV_SM_CLOCK``
(MHz), ``DCGM_FI_DEV_GPU_TEMP`` (C), and the clocks-event reasons bitmask ``DCGM_FI_DEV_CLOCKS_EVENT_REASONS``
(``DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`` before DCGM 3.3; not in the default counters: add it to see throttling).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from pytest_sglang_tune.telemetry.summary import empty_summary, summarize

FIELDS: dict[str, str] = {
    "DCGM_FI_DEV_GPU_UTIL": "util_pct",
    "DCGM_FI_DEV_FB_USED": "mem_used_mib",
    "DCGM_FI_DEV_FB_FREE": "mem_free_mib",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_SM_CLOCK": "sm_clock_mhz",
    "DCGM_FI_DEV_GPU_TEMP": "temp_c",
}
REASONS = ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")
POD_LABELS = (("pod", "namespace"), ("exported_pod", "exported_namespace"), ("pod_name", "pod_namespace"))


class PrometheusError(RuntimeError):
    """Prometheus did not answer, or answered with an error (its ``errorType`` and ``error``)."""


def prom_query(url: str, query: str, at: float, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """``GET <url>/api/v1/query?query=…&time=…`` → the ``data.result`` list (vector or matrix)."""
    import requests

    try:
        resp = requests.get(url.rstrip("/") + "/api/v1/query", params={"query": query, "time": f"{at:.3f}"},
                            timeout=timeout)
    except requests.RequestException as exc:
        raise PrometheusError(f"Prometheus at {url} did not answer: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        raise PrometheusError(f"Prometheus at {url} answered HTTP {resp.status_code} without JSON") from None
    if body.get("status") != "success":
        raise PrometheusError(f"Prometheus at {url}: {body.get('errorType', 'error')}: {body.get('error', body)}")
    result = body.get("data", {}).get("result", [])
    return list(result) if isinstance(result, list) else []


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DcgmSampler:
    """``start()``/``stop()`` like ``GpuSampler``, for the GPUs of one pod, from Prometheus. Never raises."""

    def __init__(self, prometheus_url: str, *, pod: str, namespace: str | None = None, timeout: float = 10.0,
                 uuids: Sequence[str] = ()) -> None:
        self.url = prometheus_url
        self.pod = pod
        self.namespace = namespace
        self.timeout = timeout
        self.uuids = list(uuids)
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.time()

    def _selector(self, labels: tuple[str, str], name: str) -> str:
        pod_l, ns_l = labels
        parts = [f"{pod_l}={_quote(self.pod)}"]
        if self.namespace:
            parts.append(f"{ns_l}={_quote(self.namespace)}")
        return f"{name}{{{','.join(parts)}}}"

    def _series(self, names: Sequence[str], window: int, at: float) -> tuple[str, list[dict[str, Any]]]:
        """The first of ``names`` with series for this pod, under the first pod-label spelling that has any."""
        for name in names:
            for labels in POD_LABELS:
                result = prom_query(self.url, f"{self._selector(labels, name)}[{window}s]", at, timeout=self.timeout)
                if result:
                    return name, result
        return "", []

    def stop(self) -> dict[str, Any]:
        """Read every sample of the pod's GPUs stored during the point and summarise them."""
        t1 = time.time()
        window = max(1, math.ceil(t1 - self._t0))
        rows: dict[tuple[str, float], dict[str, Any]] = {}
        notes: list[str] = []
        try:
            for metric, key in [*FIELDS.items(), (REASONS[0], "reasons")]:
                names = REASONS if key == "reasons" else (metric,)
                found, result = self._series(names, window, t1)
                if not found:
                    if key == "reasons":
                        notes.append(f"DCGM: no {' or '.join(REASONS)} for pod {self.pod}: throttling is not "
                                     "visible (add the field to the exporter's counters)")
                    continue
                for series in result:
                    labels = series.get("metric", {})
                    uuid = str(labels.get("UUID") or labels.get("uuid") or f"gpu {labels.get('gpu', '?')}")
                    for ts, value in series.get("values") or [series.get("value")]:
                        if float(ts) < self._t0:  # the window is rounded up to whole seconds
                            continue
                        row = rows.setdefault((uuid, float(ts)), {"t": float(ts), "uuid": uuid,
                                                                   "name": labels.get("modelName")})
                        row[key] = int(float(value)) if key == "reasons" else float(value)
        except PrometheusError as exc:
            return empty_summary("dcgm", 0.0, f"no GPU telemetry: {exc}")
        samples = []
        for row in rows.values():
            if row.get("mem_used_mib") is not None and row.get("mem_free_mib") is not None:
                row["mem_total_mib"] = row["mem_used_mib"] + row.pop("mem_free_mib")
            samples.append(row)
        if not samples:
            return empty_summary("dcgm", 0.0, f"no DCGM sample for pod {self.pod} in Prometheus at {self.url} "
                                              f"during the point ({window}s; is the exporter scraped, with its "
                                              "Kubernetes pod mapping on?)")
        stamps = sorted({r["t"] for r in samples})
        interval = statistics.median(b - a for a, b in itertools.pairwise(stamps)) if len(stamps) > 1 else 0.0
        return summarize(samples, source="dcgm", interval_s=interval, order=self.uuids, warnings=notes)
