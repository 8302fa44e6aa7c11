"""The tuning engine of one pytest process: deploys configs (one at a time per process), runs points, builds records.

The plugin calls it from items and fixtures; it knows nothing about pytest nodes beyond plain values.
Deployments are keyed by (suite, config_id): consecutive tests of one config share one server, and the engine
stops a config's server after its last test (``release``), when it crashed (redeployed on next use), and at exit.
"""

from __future__ import annotations

import atexit
import os
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_sglang_tune import TOOL_NAME, __version__
from pytest_sglang_tune.backends.base import Backend, Capacity, Deployment, DeploymentSpec
from pytest_sglang_tune.errors import BackendError, CapacityError, ServerCrashed
from pytest_sglang_tune.grammar import SLO
from pytest_sglang_tune.loadgen.workload import Load, Workload
from pytest_sglang_tune.redact import redact, redact_text
from pytest_sglang_tune.space import TuneConfig
from pytest_sglang_tune.suite import Suite

RESULT_KEY = "sglang_tune_result"


@dataclass
class Options:
    backend: str = "sim"
    gpus: int | None = None
    report_dir: Path = Path("reports")
    strict_slo: bool = False
    require_capacity: bool = False
    ready_timeout: float | None = None
    launcher: str | None = None
    keep_logs: bool = True
    slos: tuple[Any, ...] | None = None       # --sglang-slo: replaces every suite's SLOs
    objective: Any = None                     # --sglang-objective
    gpu_hour_price: float | None = None
    baseline: Path | None = None
    fail_on: tuple[Any, ...] = ()
    loadgen_procs: int = 1
    repeats: int | None = None

    def apply(self, suite: Suite) -> Suite:
        """The suite as this run sees it: command-line SLOs/objective/price override the suite's."""
        from dataclasses import replace

        changes: dict[str, Any] = {}
        if self.slos is not None:
            changes["slos"] = self.slos
        if self.objective is not None:
            changes["objective"] = self.objective
        if self.gpu_hour_price is not None:
            changes["gpu_hour_price"] = self.gpu_hour_price
        if self.repeats is not None:
            changes["repeats"] = self.repeats
        return replace(suite, **changes) if changes else suite


@dataclass
class Live:
    """A deployed, ready, verified server."""

    key: tuple[str, str]
    deployment: Deployment
    lease: Any
    server_info: dict[str, Any]
    ready_s: float
    sglang_version: str | None
    points: int = 0


@dataclass
class Engine:
    options: Options
    run_id: str
    backend: Backend
    lease_dir: Path
    live: Live | None = None
    _capacity: Capacity | None = None
    crashed: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        atexit.register(self.shutdown)

    # --- capacity -------------------------------------------------------------------------------------------
    def capacity(self) -> Capacity:
        if self._capacity is None:
            self._capacity = self.backend.capacity()
        return self._capacity

    def _declared_needs_gpus(self, settings: Mapping[str, Any]) -> bool | None:
        """The suite's ``needs_gpus``, else what the backend can tell from what it runs (docker: the image's
        ``org.sglang-tune.needs-gpus`` label), else None."""
        if settings.get("needs_gpus") is not None:
            return bool(settings["needs_gpus"])
        label = getattr(self.backend, "image_needs_gpus", None)
        return label(settings) if label is not None else None

    def needs_gpus(self, settings: Mapping[str, Any]) -> bool:
        """A property of the launcher or image (the sim has virtual GPUs), not of the backend."""
        declared = self._declared_needs_gpus(settings)
        return declared if declared is not None else bool(getattr(self.backend, "needs_gpus_default", True))

    def capacity_problem(self, cfg: TuneConfig, settings: Mapping[str, Any] | None = None) -> str | None:
        if settings is not None and self.options.gpus is None and self._declared_needs_gpus(settings) is False:
            return None  # e.g. a local launcher that runs the sim: host GPUs do not matter
        cap = self.capacity()
        if cfg.gpus > cap.gpus:
            return (f"config needs {cfg.gpus} GPU(s) (tp × dp × pp) but {cap.gpus} available "
                    f"({cap.source})")
        fits = getattr(self.backend, "fits", None)  # e.g. ome: some node must have that many GPUs free
        if fits is not None:
            problem: str | None = fits(cfg.gpus, settings)
            return problem
        return None

    # --- deployments ----------------------------------------------------------------------------------------
    def ensure(self, suite: Suite, cfg: TuneConfig, table: Any) -> Live:
        """The live server for ``cfg``: reuse, or stop the previous one and deploy this one."""
        key = (suite.name, cfg.config_id)
        if self.live is not None:
            if self.live.key == key and self.live.deployment.poll() is None:
                return self.live
            self.release()  # another config's server, or this one died: stop it before deploying
        settings = dict(suite.backend_settings(self.options.backend))
        problem = self.capacity_problem(cfg, settings)
        if problem:
            raise CapacityError(problem, config_id=cfg.config_id)
        from pytest_sglang_tune.backends.leases import GpuLeases
        from pytest_sglang_tune.readiness import check_flags_applied, get_server_info, wait_ready

        total = self.capacity().gpus
        if not self.needs_gpus(settings):
            total = max(total, cfg.gpus)
        leases = GpuLeases(self.lease_dir, total)
        lease = leases.acquire(cfg.gpus, owner=f"{cfg.suite}/{cfg.config_id}",
                               busy=getattr(self.backend, "busy_devices", None))
        deployment = None
        try:
            spec = DeploymentSpec(
                suite=suite.name, config_id=cfg.config_id, model_path=suite.model_path,
                served_model_name=suite.served_name, server_args=cfg.args, argv=tuple(table.to_argv(cfg.args)),
                gpus=cfg.gpus, settings={**settings, "sglang_version": suite.sglang_version or table.version},
                run_id=self.run_id, gpu_ids=lease.device_ids,
            )
            deployment = self.backend.start(spec)
            timeout = float(settings.get("ready_timeout") or self.options.ready_timeout or
                            (120.0 if self.options.backend == "sim" else 1800.0))
            ready_s = wait_ready(deployment, timeout=timeout, config_id=cfg.config_id)
            info = get_server_info(deployment)
            dests = {name: table.resolve(name).field for name in cfg.args}
            check_flags_applied(info, cfg.args, dests, config_id=cfg.config_id, log_tail=deployment.logs(20))
        except BaseException:
            if deployment is not None:
                self.backend.stop(deployment)
            lease.release()
            raise
        version = info.get("version") if isinstance(info.get("version"), str) else None
        self.live = Live(key, deployment, lease, info, ready_s, version or table.version)
        return self.live

    def release(self) -> None:
        """Stop the live server (after its config's last test, on crash, or at exit)."""
        live, self.live = self.live, None
        if live is None:
            return
        try:
            self.backend.stop(live.deployment)
        finally:
            if live.lease is not None:
                live.lease.release()

    def shutdown(self) -> None:
        try:
            self.release()
        except Exception:  # at exit, best effort; the process group is killed by stop()
            pass

    def watchdog(self, live: Live) -> Any:
        def check() -> None:
            died = live.deployment.poll()
            if died is not None:
                raise ServerCrashed(f"server crashed during the point: {died}", config_id=live.key[1],
                                    log_tail=live.deployment.logs(40))
        return check

    # --- measuring ------------------------------------------------------------------------------------------
    def measure(self, live: Live, workload: Workload, load: Load, slos: Sequence[SLO], gpus: int) -> dict[str, Any]:
        """Run one point and return (metrics block, extras)."""
        from pytest_sglang_tune.loadgen.runner import run_point
        from pytest_sglang_tune.metrics import summarize
        from pytest_sglang_tune.readiness import flush_and_drain, get_server_info

        if live.points:
            flush_and_drain(live.deployment)
        live.points += 1
        check = self.watchdog(live)
        try:
            point = run_point(live.deployment.endpoint, workload, load, watchdog=check,
                              scrape_metrics=bool(live.server_info.get("enable_metrics")),
                              procs=self.options.loadgen_procs)
            # requests to a dead server fail fast, possibly before the watchdog's next tick: check once more
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and any(s.error for s in point.samples[-3:]):
                check()
                time.sleep(0.1)
            check()
        except ServerCrashed:
            self.crashed[live.key] = "crashed during a point"
            self.release()  # the next test of this config redeploys
            raise
        metrics = summarize(point, gpus=gpus, slos=slos)
        warnings = list(point.warnings)
        sim_lag = None
        sim = get_server_info(live.deployment).get("sim")
        if isinstance(sim, dict):
            lag = sim.get("lag")
            if isinstance(lag, dict):
                sim_lag = lag
                if lag.get("warning"):
                    text = str(lag["warning"])
                    warnings.append(text if "behind" in text else f"the simulated server fell behind: {text}")
            flags = sim.get("not_modelled_flags", sim.get("not_modelled"))  # issue 11: flags only, not the rest
            if flags:
                warnings.append("flags not modelled by the sim (accepted, no effect): " + ", ".join(map(str, flags)))
        e2e = [round(x, 6) for x in (s.e2e_s for s in point.samples if s.ok and not s.warmup) if x is not None]
        return {"metrics": metrics, "warnings": warnings, "server_metrics": point.server_metrics,
                "sim_lag": sim_lag, "e2e_s": e2e}


def base_record(*, nodeid: str, display_id: str, suite: Suite, cfg: TuneConfig, workload: Workload | None,
                load: Load | None, backend: str, sglang_version: str) -> dict[str, Any]:
    """The fields every result has, known before anything deploys."""
    return {
        "test_id": nodeid,
        "display_id": display_id,
        "suite": suite.name,
        "suite_file": str(suite.path),
        "workload": ({"name": workload.name, "content_hash": workload.content_hash,
                      "endpoint": workload.endpoint, "input_len": str(workload.input_len),
                      "output_len": str(workload.output_len), "num_requests": workload.num_requests}
                     if workload else None),
        "config_id": cfg.config_id,
        "server_args": {k.lstrip("-"): v for k, v in cfg.server_args},
        "gpus_required": cfg.gpus,
        "backend": backend,
        "sglang_version": sglang_version,
        "model": suite.model_path,
        "tool_version": __version__,
        "load": load.to_dict() if load else None,
        "slos": [str(s) for s in suite.slos],
        "objective": str(suite.objective),
        "launch_command": None,
        "image": None,
        "image_digest": None,
        "perf_model": None,
        "gpus_used": [],
        "status": None,
        "reason": None,
        "metrics": None,
        "slo_pass": None,
    }


def deployment_fields(live: Live) -> dict[str, Any]:
    d = live.deployment
    info = live.server_info
    sim = info.get("sim") if isinstance(info.get("sim"), dict) else None
    fields: dict[str, Any] = {
        "launch_command": shlex.join(d.launch_command),
        "sglang_version": live.sglang_version,
        "ready_s": round(live.ready_s, 3),
        "endpoint_url": d.endpoint.base_url,
    }
    for k in ("image", "image_digest", "gpus_used", "endpoint_mode", "inference_service", "namespace", "node", "pod",
              "container"):
        if k in d.info:
            fields[k] = d.info[k]
    if sim:
        fields["perf_model"] = sim.get("perf_model")
        fields["sim"] = {k: sim.get(k) for k in ("perf_model", "gpu", "not_modelled", "lag") if k in sim}
    return fields


def finish_record(record: dict[str, Any]) -> dict[str, Any]:
    return redact(record)  # type: ignore[no-any-return]


def owner_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def tool_info() -> dict[str, str]:
    return {"name": TOOL_NAME, "version": __version__}


def log_tail_of(exc: BaseException) -> str:
    return redact_text(exc.log_tail) if isinstance(exc, BackendError) else ""
