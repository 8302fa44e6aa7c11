"""The typed result model: one frozen ``Point`` (what was measured) and one ``Result`` (how it went).

Items and fixtures produce a ``Result``; the session owner (:mod:`pytest_sglang_tune.session`) finishes it
(status, reason, time) and writes it; the report is a list of ``Result.to_dict()``. Nothing else shapes a
result. ``from_dict`` reads every schema version this package wrote (1 and 2; see docs/report-schema.md) and
keeps fields it does not know in ``extra``, so a round trip loses nothing.

The one key and its named projections (never a pytest node id: xdist rewrites those):

* ``Point.key``    (suite, workload, content hash, load, config_id) — identity; resume needs all of it.
* ``Point.slot``   (suite, workload, load, config_id) — where a result sits; diff and the baseline gate match
  on it, and comparability then requires equal content hashes *on the same slot*; a report deduplicates on it.
* ``Point.group``  (suite, workload, load) — one ranking.
* ``Point.config_key`` (suite, config_id) — one deployment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)

STATUSES: tuple[str, ...] = ("passed", "failed", "skipped", "error", "infeasible", "excluded", "not_measured")
RANKED_STATUSES = ("passed", "failed")

LoadKey = tuple[tuple[bool, float], tuple[bool, float]]

# Deployment facts a backend reports; they sit at the top level of a result's dict (schema 1 placed them so).
DEPLOYMENT_KEYS: tuple[str, ...] = (
    "launch_command", "image", "image_digest", "gpus_used", "ready_s", "endpoint_url", "endpoint_mode",
    "inference_service", "namespace", "node", "pod", "container", "sim", "manifest",
)
SCREENING: tuple[str, ...] = ("low", "probe")  # fidelities that are never ranked, matched or resumed
COST_KEYS: tuple[str, ...] = ("usd_per_mtok", "deploy_s", "measure_s", "gpu_s", "virtual")


def load_key(load: Mapping[str, Any] | None) -> LoadKey:
    """Sort key and identity of a load level: by concurrency, then request rate (absent values first). A trace
    replay's level is its ``time_scale`` (its mean rate depends on the trace's content, which an edited trace
    changes), keyed as the speed-up ``1 / time_scale`` so that levels still sort by intensity."""
    load = load or {}
    c, r, ts = load.get("concurrency"), load.get("request_rate"), load.get("time_scale")
    pace = (True, 1.0 / float(ts)) if ts else (r is not None, float(r or 0))
    return ((c is not None, float(c or 0)), pace)


def load_label(load: Mapping[str, Any] | None) -> str:
    """``c64``, ``r2.5``, ``r4-c16``, a trace replay ``ts0.5`` (as ``Load.label``); ``-`` when unknown."""
    load = load or {}
    if load.get("search") is not None:  # a load search's summary: the highest load found
        return "max"
    parts = []
    if load.get("time_scale") is not None:  # a trace replay: its request_rate is the replay's mean rate
        scale = float(load["time_scale"])
        parts.append(f"ts{int(scale) if scale.is_integer() else scale}")
    elif load.get("request_rate") is not None:
        rate = float(load["request_rate"])
        parts.append(f"r{int(rate) if rate.is_integer() else rate}")
    if load.get("concurrency") is not None:
        parts.append(f"c{int(load['concurrency'])}")
    return "-".join(parts) or "-"


@dataclass(frozen=True)
class Point:
    """What one result measured: a configuration of a suite, under one workload, at one load level."""

    suite: str
    workload: str
    content_hash: str | None
    concurrency: int | None
    request_rate: float | None
    config_id: str
    time_scale: float | None = None  # a trace replay's level (its request_rate is then the level's mean rate)
    search: str | None = None        # "max_within_slo": the summary of a load search (no level of its own)

    @property
    def load(self) -> dict[str, Any]:
        load: dict[str, Any] = {"concurrency": self.concurrency, "request_rate": self.request_rate}
        if self.time_scale is not None:
            load["time_scale"] = self.time_scale
        if self.search is not None:
            load["search"] = self.search
        return load

    @property
    def load_key(self) -> LoadKey:
        return load_key(self.load)

    @property
    def key(self) -> tuple[str, str, str | None, LoadKey, str]:
        return (self.suite, self.workload, self.content_hash, self.load_key, self.config_id)

    @property
    def slot(self) -> tuple[str, str, LoadKey, str]:
        return (self.suite, self.workload, self.load_key, self.config_id)

    @property
    def group(self) -> tuple[str, str, LoadKey]:
        return (self.suite, self.workload, self.load_key)

    @property
    def config_key(self) -> tuple[str, str]:
        return (self.suite, self.config_id)

    @property
    def where(self) -> str:
        """``suite/workload@c16``: the point without its config, for messages."""
        return f"{self.suite}/{self.workload}@{load_label(self.load)}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        w = d.get("workload")
        name, content = (w.get("name"), w.get("content_hash")) if isinstance(w, Mapping) else (w, None)
        raw_load = d.get("load")
        load: Mapping[str, Any] = raw_load if isinstance(raw_load, Mapping) else {}
        conc, rate, scale = load.get("concurrency"), load.get("request_rate"), load.get("time_scale")
        return cls(suite=str(d.get("suite") or ""), workload="" if name is None else str(name),
                   content_hash=None if content is None else str(content),
                   concurrency=None if conc is None else int(conc),
                   request_rate=None if rate is None else float(rate), config_id=str(d.get("config_id") or ""),
                   time_scale=None if scale is None else float(scale),
                   search=None if load.get("search") is None else str(load["search"]))


@dataclass(frozen=True)
class Cost:
    """What a result cost: ``usd_per_mtok`` (with a GPU-hour price), seconds to deploy (charged to the first
    point of a deployment) and to measure (flush, warm-up, measurement), and GPU seconds held ((deploy + measure)
    × GPUs). ``virtual``: a simulated server's figures — its predicted start-up and its own clock."""

    usd_per_mtok: float | None = None
    deploy_s: float | None = None
    measure_s: float | None = None
    gpu_s: float | None = None
    virtual: bool | None = None  # True: a simulated server's figures (what the run would cost on its GPU)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COST_KEYS}

    @classmethod
    def from_dict(cls, d: Any) -> Cost:
        d = d if isinstance(d, Mapping) else {}
        return cls(**{k: d.get(k) for k in COST_KEYS})


def perf_model_of(value: Any) -> dict[str, Any] | None:
    """The ``perf_model`` object ``{name, data_version, gpu, ...}`` from what a server or a report says
    (schema 1 and older sims wrote just the name)."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        out = {"name": None, "data_version": None, "gpu": None}
        out.update(value)
        return out
    return {"name": str(value), "data_version": None, "gpu": None}


def perf_model_text(value: Any) -> str:
    """``aiconfigurator-core (data 0.5.14, h100_sxm)``: a perf model for people; ``""`` when there is none."""
    pm = perf_model_of(value)
    if not pm or not pm.get("name"):
        return ""
    extra = ", ".join(str(x) for x in (f"data {pm['data_version']}" if pm.get("data_version") else None,
                                       pm.get("gpu")) if x)
    return f"{pm['name']} ({extra})" if extra else str(pm["name"])


@dataclass(frozen=True)
class Result:
    """One measured (or not measured) point. Build it with ``Result(point=...)`` and ``with_(...)``."""

    point: Point
    status: str | None = None
    reason: str | None = None
    test_id: str | None = None
    display_id: str | None = None
    suite_file: str | None = None
    workload: Mapping[str, Any] = field(default_factory=dict)   # name, content_hash, endpoint, lengths, counts
    server_args: Mapping[str, Any] = field(default_factory=dict)
    gpus_required: int | None = None
    backend: str | None = None
    sglang_version: str | None = None
    model: str | None = None
    tool_version: str | None = None
    slos: tuple[str, ...] = ()
    objective: str | None = None
    deployment: Mapping[str, Any] = field(default_factory=dict)  # DEPLOYMENT_KEYS
    perf_model: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    confidence: Mapping[str, Any] = field(default_factory=dict)  # metric -> [lo, hi] (95 %)
    confidence_method: Mapping[str, Any] | None = None            # {method, seed, resamples, batches}
    slo_results: Mapping[str, bool] = field(default_factory=dict)
    slo_pass: bool | None = None
    warnings: tuple[str, ...] = ()
    e2e_s: tuple[float, ...] = ()
    server_metrics: Mapping[str, Any] | None = None
    repeats: Mapping[str, Any] | None = None
    baseline_metrics: Mapping[str, Any] | None = None
    cost: Cost = field(default_factory=Cost)
    telemetry: Mapping[str, Any] | None = None
    replay: Mapping[str, Any] | None = None                      # a trace replay: how the schedule was kept
    trial: Mapping[str, Any] | None = None
    fidelity: str | None = None                                  # "low" (a halving rung), "probe" (a load search)
    max_load: Mapping[str, Any] | None = None                    # a load search's summary: bounds, probes, found
    log_tail: str | None = None
    finished_at: str | None = None
    resumed_from: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)       # fields this version does not know

    def with_(self, **changes: Any) -> Result:
        """A copy with ``changes`` (the dataclass is frozen)."""
        return replace(self, **changes)

    @property
    def measured(self) -> bool:
        """Whether it takes part in the ranking, diff matching and resume: a full-fidelity measurement that passed,
        or failed with metrics (e.g. a strict-SLO failure). Screening measurements (``fidelity`` low or probe)
        never do."""
        if not self.full_fidelity:
            return False
        return self.status == "passed" or (self.status == "failed" and bool(self.metrics))

    @property
    def full_fidelity(self) -> bool:
        """Not a screening measurement (a halving rung's ``low``, a load search's ``probe``)."""
        return self.fidelity not in SCREENING

    @property
    def meets_slos(self) -> bool:
        return self.status == "passed" and self.slo_pass is not False

    def to_dict(self) -> dict[str, Any]:
        """The result as report.json holds it (schema 2; plain builtins, fit for xdist and JSON)."""
        p = self.point
        out: dict[str, Any] = {
            "test_id": self.test_id, "display_id": self.display_id, "suite": p.suite, "suite_file": self.suite_file,
            "workload": {**self.workload, "name": p.workload or None, "content_hash": p.content_hash},
            "config_id": p.config_id, "server_args": dict(self.server_args), "gpus_required": self.gpus_required,
            "backend": self.backend, "sglang_version": self.sglang_version, "model": self.model,
            "tool_version": self.tool_version, "load": p.load, "slos": list(self.slos), "objective": self.objective,
        }
        out.update({k: None for k in ("launch_command", "image", "image_digest")})
        out["gpus_used"] = []
        out.update(copy.deepcopy(dict(self.deployment)))
        out.update({
            "perf_model": dict(self.perf_model) if self.perf_model else None,
            "status": self.status, "reason": self.reason,
            "metrics": copy.deepcopy(dict(self.metrics)) if self.metrics is not None else {},
            "slo_results": dict(self.slo_results), "slo_pass": self.slo_pass, "warnings": list(self.warnings),
            "cost": self.cost.to_dict(), "telemetry": self.telemetry, "trial": self.trial, "fidelity": self.fidelity,
        })
        optional = {"confidence": dict(self.confidence) or None, "confidence_method": self.confidence_method,
                    "e2e_s": list(self.e2e_s) or None, "server_metrics": self.server_metrics,
                    "repeats": self.repeats, "baseline_metrics": self.baseline_metrics, "log_tail": self.log_tail,
                    "replay": self.replay, "max_load": None if self.max_load is None else dict(self.max_load),
                    "finished_at": self.finished_at, "resumed_from": self.resumed_from}
        out.update({k: v for k, v in optional.items() if v is not None})
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Result:
        """Read a result of any readable schema version; unknown fields go to ``extra``."""
        known = {f.name for f in fields(cls)} - {"point", "deployment", "extra", "cost", "workload"}
        w = d.get("workload")
        workload = {k: v for k, v in w.items() if k not in ("name", "content_hash")} if isinstance(w, Mapping) \
            else {}
        kwargs: dict[str, Any] = {k: d[k] for k in known if k in d and d[k] is not None}
        for key, kind in (("slos", tuple), ("warnings", tuple), ("e2e_s", tuple)):
            if key in kwargs:
                kwargs[key] = kind(kwargs[key])
        kwargs["perf_model"] = perf_model_of(d.get("perf_model"))
        skip = {*known, *DEPLOYMENT_KEYS, "point", "cost", "workload", "suite", "config_id", "load"}
        return cls(point=Point.from_dict(d), workload=workload, cost=Cost.from_dict(d.get("cost")),
                   deployment={k: d[k] for k in DEPLOYMENT_KEYS if k in d and d[k] is not None},
                   extra={k: v for k, v in d.items() if k not in skip}, **kwargs)


def as_result(value: Result | Mapping[str, Any]) -> Result:
    """A ``Result`` from either a ``Result`` or a result dict (report.json, results.jsonl, a hook's list)."""
    return value if isinstance(value, Result) else Result.from_dict(value)


def dedupe(results: list[Result]) -> list[Result]:
    """One result per slot and fidelity, the last one seen, in the order they first appeared (a config's screening
    measurement and its full one are both kept; a later full one never hides behind an earlier low one)."""
    by_slot: dict[tuple[Any, ...], Result] = {}
    for r in results:
        by_slot[(r.point.slot, r.fidelity or "full")] = r
    return list(by_slot.values())
