"""The deployment lifecycle and the measurement of one pytest process (one config deployed at a time).

Deployments are keyed by (suite, config_id): consecutive tests of one config share one server, and the engine
stops a config's server after its last test (``release``), when it crashed (redeployed on next use), and when
the session owner shuts it down. It knows backends only through ``Backend`` and pytest not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.base import Backend, Capacity, Deployment, DeploymentSpec, ServerFacts
from pytest_sglang_tune.errors import BackendError, CapacityError, ServerCrashed
from pytest_sglang_tune.grammar import SLO
from pytest_sglang_tune.loadgen.workload import Load, Workload
from pytest_sglang_tune.options import Options
from pytest_sglang_tune.progress import NullProgress
from pytest_sglang_tune.redact import redact_text
from pytest_sglang_tune.space import TuneConfig
from pytest_sglang_tune.suite import Suite


@dataclass
class Live:
    """A deployed, ready, verified server."""

    key: tuple[str, str]
    deployment: Deployment
    lease: Any
    server_info: dict[str, Any]
    ready_s: float
    sglang_version: str | None
    facts: ServerFacts
    points: int = 0
    deploy_s: float = 0.0          # start → ready: wall seconds, or a simulated server's virtual start-up
    virtual: bool = False          # GPU time of a simulated server: what the same run would cost on its GPU
    gpus: int = 1


@dataclass(frozen=True)
class Measurement:
    """One run of one point: the metrics block and what else the point observed."""

    metrics: dict[str, Any]
    warnings: tuple[str, ...] = ()
    e2e_s: tuple[float, ...] = ()
    server_metrics: dict[str, Any] | None = None
    confidence: dict[str, list[float]] = field(default_factory=dict)
    confidence_method: dict[str, Any] | None = None
    telemetry: dict[str, Any] | None = None
    replay: dict[str, Any] | None = None
    deploy_s: float = 0.0          # charged to the first point of a deployment
    measure_s: float = 0.0         # flush + warm-up + measurement
    virtual: bool = False  # a trace replay: achieved vs scheduled rate, send lag, cache hits


@dataclass
class Engine:
    options: Options
    run_id: str
    backend: Backend
    lease_dir: Path
    live: Live | None = None
    progress: Any = field(default_factory=lambda: NullProgress())  # progress.Progress: where long steps report
    _capacity: Capacity | None = None
    crashed: dict[tuple[str, str], str] = field(default_factory=dict)

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
        return self.backend.image_needs_gpus(settings)

    def needs_gpus(self, settings: Mapping[str, Any]) -> bool:
        """A property of the launcher or image (the sim has virtual GPUs), not of the backend."""
        declared = self._declared_needs_gpus(settings)
        return declared if declared is not None else self.backend.needs_gpus_default

    def capacity_problem(self, cfg: TuneConfig, settings: Mapping[str, Any]) -> str | None:
        if self.options.gpus is None and self._declared_needs_gpus(settings) is False:
            return None  # e.g. a local launcher that runs the sim: host GPUs do not matter
        cap = self.capacity()
        if cfg.gpus > cap.gpus:
            return (f"config needs {cfg.gpus} GPU(s) (tp × dp × pp) but {cap.gpus} available "
                    f"({cap.source})")
        return self.backend.fits(cfg.gpus, settings)

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
        lease = leases.acquire(cfg.gpus, owner=f"{cfg.suite}/{cfg.config_id}", busy=self.backend.busy_devices)
        deployment = None
        t_start = time.monotonic()
        try:
            spec = DeploymentSpec(
                suite=suite.name, config_id=cfg.config_id, model_path=suite.model_path,
                served_model_name=suite.served_name, server_args=cfg.args, argv=tuple(table.to_argv(cfg.args)),
                gpus=cfg.gpus, settings={**settings, "sglang_version": suite.sglang_version or table.version},
                run_id=self.run_id, gpu_ids=lease.device_ids,
            )
            deployment = self.backend.start(spec)
            timeout = float(settings.get("ready_timeout") or self.options.ready_timeout or
                            self.backend.default_ready_timeout)
            ready_s = wait_ready(deployment, timeout=timeout, config_id=cfg.config_id, progress=self.progress,
                                 label=f"{suite.name} {cfg.display}")
            info = get_server_info(deployment)
            dests = {name: table.resolve(name).field for name in cfg.args}
            check_flags_applied(info, cfg.args, dests, config_id=cfg.config_id, log_tail=deployment.logs(20))
        except BaseException:
            if deployment is not None:
                self.backend.stop(deployment)
            lease.release()
            raise
        version = info.get("version") if isinstance(info.get("version"), str) else None
        facts = self.backend.server_facts(info)
        virtual = facts.startup_s is not None
        deploy_s = facts.startup_s if facts.startup_s is not None else time.monotonic() - t_start
        self.live = Live(key, deployment, lease, info, ready_s, version or table.version, facts,
                         deploy_s=round(deploy_s, 3), virtual=virtual, gpus=cfg.gpus)
        return self.live

    def release(self) -> None:
        """Stop the live server (after its config's last test, on crash, or at the end of the session)."""
        live, self.live = self.live, None
        if live is None:
            return
        try:
            self.backend.stop(live.deployment)
        finally:
            if live.lease is not None:
                live.lease.release()

    def shutdown(self) -> None:
        """Stop whatever is live; best effort (a backend's stop already kills the process group)."""
        try:
            self.release()
        except Exception:
            pass

    def watchdog(self, live: Live) -> Any:
        def check() -> None:
            died = live.deployment.poll()
            if died is not None:
                raise ServerCrashed(f"server crashed during the point: {died}", config_id=live.key[1],
                                    log_tail=live.deployment.logs(40))
        return check

    # --- measuring ------------------------------------------------------------------------------------------
    def measure(self, live: Live, workload: Workload, load: Load, slos: Sequence[SLO], gpus: int, *,
                wanted: Sequence[str] = (), seed: int = 0) -> Measurement:
        """Run one point; ``wanted`` metrics get 95 % intervals from the point's own requests (``stats``)."""
        from pytest_sglang_tune.loadgen.point import run_point
        from pytest_sglang_tune.loadgen.samples import RequestCounter
        from pytest_sglang_tune.metrics import point_intervals, summarize
        from pytest_sglang_tune.progress import ticking
        from pytest_sglang_tune.readiness import flush_and_drain, get_server_info

        t_start = time.monotonic()
        flush_problem = flush_and_drain(live.deployment) if live.points else None
        deploy_s = live.deploy_s if not live.points else 0.0  # the deployment is charged to its first point
        live.points += 1
        check = self.watchdog(live)
        sampler = self.backend.telemetry_sampler(live.deployment)  # GPU telemetry, outside the client's process
        telemetry = None
        if sampler is not None:
            sampler.start()
        counter = RequestCounter()
        try:
            with ticking(self.progress, point_progress(workload, load, counter, self.options.loadgen_procs)):
                point = run_point(live.deployment.endpoint, workload, load, watchdog=check,
                                  scrape_metrics=bool(live.server_info.get("enable_metrics")),
                                  procs=self.options.loadgen_procs, counter=counter)
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
        finally:
            if sampler is not None:
                telemetry = sampler.stop()
        metrics = summarize(point, gpus=gpus, slos=slos)
        facts = self.backend.server_facts(get_server_info(live.deployment))  # e.g. the sim's lag, now
        live.facts = facts
        confidence, method = point_intervals(point, wanted, gpus=gpus, slos=slos, seed=seed)
        e2e = tuple(round(x, 6) for x in (s.e2e_s for s in point.samples if s.ok and not s.warmup)
                    if x is not None)
        warnings = (*((flush_problem,) if flush_problem else ()), *point.warnings, *facts.warnings,
                    *((telemetry or {}).get("warnings") or ()))
        replay = None
        if workload.trace:
            from pytest_sglang_tune.loadgen.trace import replay_stats

            replay = replay_stats(point, workload)
        return Measurement(metrics=metrics, warnings=warnings, e2e_s=e2e, server_metrics=point.server_metrics or None,
                           confidence=confidence, confidence_method=method, telemetry=telemetry, replay=replay,
                           deploy_s=deploy_s, measure_s=round(time.monotonic() - t_start, 3), virtual=live.virtual)


def point_progress(workload: Workload, load: Load, counter: Any, procs: int) -> Callable[[], str]:
    """The text of a running point: ``chat c64: 37/128 requests, 1,520 tok/s (now), 12s``. Read off the load
    generator's counter by the progress ticker; with several load-generator processes only the time is known."""
    from pytest_sglang_tune.progress import duration

    start = time.monotonic()
    total = workload.num_requests if workload.turns == 1 and not workload.trace else None
    prev = [start, 0]

    def text() -> str:
        now = time.monotonic()
        head = f"{workload.name} {load.label()}: "
        if procs > 1:
            return head + f"measuring in {procs} processes, {duration(now - start)}"
        done, tokens = counter.done, counter.output_tokens
        rate = (tokens - prev[1]) / max(now - prev[0], 1e-6)
        prev[:] = [now, tokens]
        failed = f" ({counter.failed} failed)" if counter.failed else ""
        of = f"/{total}" if total else ""
        return head + f"{done}{of} requests{failed}, {rate:,.0f} tok/s, {duration(now - start)}"
    return text


def log_tail_of(exc: BaseException) -> str:
    return redact_text(exc.log_tail) if isinstance(exc, BackendError) else ""
