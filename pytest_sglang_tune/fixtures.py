"""Fixtures for Python suites: ``sglang_server`` and ``sglang_bench``, driven by a ``sglang_tune`` marker.

Example ``suites/test_custom.py``::

    import pytest

    @pytest.mark.sglang_tune(model="Qwen/Qwen3-8B",
                             server={"grid": {"schedule-policy": ["lpm", "fcfs"]}},
                             slos=["ttft_ms.p99 <= 2000"])
    def test_long_prompts(sglang_server, sglang_bench):
        metrics = sglang_bench("D(4000,100)", concurrency=8, num_requests=16)
        assert metrics["error_rate"] == 0
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Server:
    """What the ``sglang_server`` fixture gives a test: the endpoint and what the server reports."""

    endpoint: Any
    server_info: dict[str, Any]
    config: Any
    suite: Any

    @property
    def url(self) -> str:
        return str(self.endpoint.base_url)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sglang_config" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("sglang_tune")
    if marker is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: the sglang_server / sglang_bench fixtures need a "
                                "@pytest.mark.sglang_tune(model=..., server=...) marker on the test")
    from pytest_sglang_tune.items import check_priced
    from pytest_sglang_tune.space import expand
    from pytest_sglang_tune.stash import get_session
    from pytest_sglang_tune.suite import suite_from_data

    data = dict(marker.kwargs)
    data.setdefault("name", metafunc.definition.originalname)
    suite = get_session(metafunc.config).options.apply(
        suite_from_data(data, Path(str(metafunc.definition.path)), require_workloads=False))
    check_priced(suite)
    exp = expand(suite)
    configs = list(exp.configs)
    metafunc.config.hook.pytest_sglang_tune_modify_space(config=metafunc.config, suite=suite, configs=configs)
    metafunc.parametrize("sglang_config", [(suite, cfg, exp.flags) for cfg in configs],
                         ids=[cfg.display for cfg in configs], scope="session")


@pytest.fixture
def sglang_config(request: pytest.FixtureRequest) -> Any:
    """(suite, config, flag table) of the current Python-suite test (parametrized from its marker)."""
    return request.param


@pytest.fixture
def sglang_server(request: pytest.FixtureRequest, sglang_config: Any) -> Server:
    """A ready SGLang server for the test's configuration, shared by the consecutive tests of that config."""
    from pytest_sglang_tune.stash import get_session

    suite, cfg, table = sglang_config
    session = get_session(request.config)
    engine = session.engine
    problem = engine.capacity_problem(cfg, suite.backend_settings(session.options.backend))
    if problem:
        if session.options.require_capacity:
            pytest.fail(problem + " (--sglang-require-capacity)", pytrace=False)
        pytest.skip(problem)
    live = engine.ensure(suite, cfg, table)
    return Server(live.deployment.endpoint, live.server_info, cfg, suite)


@pytest.fixture
def sglang_bench(request: pytest.FixtureRequest, sglang_server: Server, sglang_config: Any) -> Any:
    """``sglang_bench(scenario, concurrency=…, request_rate=…, num_requests=…, endpoint=…)`` → metrics dict.

    Runs one point against ``sglang_server`` and records it like a YAML suite's point (report, ranking).
    """
    from pytest_sglang_tune.loadgen.workload import Load, Workload, parse_scenario
    from pytest_sglang_tune.points import interval_seed, new_result, wanted_metrics, with_deployment, with_measurement
    from pytest_sglang_tune.stash import RESULTS, get_session

    suite, cfg, _table = sglang_config
    session = get_session(request.config)
    counter = {"n": 0}

    def bench(scenario: str | Workload, *, concurrency: int | None = None, request_rate: float | None = None,
              num_requests: int = 32, endpoint: str = "chat", name: str | None = None) -> dict[str, Any]:
        if isinstance(scenario, Workload):
            wl = scenario
        else:
            inp, out = parse_scenario(scenario)
            counter["n"] += 1
            wl = Workload(name=name or f"{request.node.originalname}-{counter['n']}", input_len=inp,
                          output_len=out, num_requests=num_requests, endpoint=endpoint)  # type: ignore[arg-type]
        if concurrency is None and request_rate is None:
            concurrency = 1
        load = Load(concurrency=concurrency, request_rate=request_rate)
        wl = replace(wl, loads=(load,))
        live = session.engine.live
        assert live is not None, "sglang_server is not deployed"
        result = new_result(nodeid=request.node.nodeid, display_id=request.node.name, suite=suite, cfg=cfg,
                            workload=wl, load=load, backend=session.options.backend,
                            sglang_version=live.sglang_version or "")
        result = with_deployment(result, live)
        measured = session.engine.measure(live, wl, load, suite.slos, cfg.gpus, wanted=wanted_metrics(suite),
                                          seed=interval_seed(result.point))
        result = with_measurement(result, measured, suite, cfg.gpus)
        request.node.stash[RESULTS] = [*request.node.stash.get(RESULTS, []), result]
        return dict(result.metrics or {})

    return bench
