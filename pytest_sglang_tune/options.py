"""Command-line and ini options → ``Options``: one parse function per option, errors that teach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.engine import Options

BACKEND_NAMES = ("sim", "local", "docker", "ome")


def _opt(config: pytest.Config, name: str, ini: str | None = None) -> Any:
    v = config.getoption(name)
    if v is None and ini:
        v = config.getini(ini)
    return v


def parse_backend(value: str) -> str:
    if value not in BACKEND_NAMES:
        raise pytest.UsageError(f"--backend={value!r} is not a valid backend. Valid backends: "
                                f"{', '.join(BACKEND_NAMES)}.")
    return value


def parse_gpus(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise pytest.UsageError(f"--gpus={value!r} is not valid: give a whole number of GPUs >= 0.")
    return n


def parse_timeout(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = -1.0
    if t <= 0:
        raise pytest.UsageError(f"--sglang-ready-timeout={value!r} is not valid: give seconds > 0.")
    return t


def parse_grammar_options(config: pytest.Config) -> dict[str, Any]:
    from pytest_sglang_tune.diff import parse_threshold
    from pytest_sglang_tune.errors import GrammarError
    from pytest_sglang_tune.grammar import parse_objective, parse_slo

    out: dict[str, Any] = {}
    try:
        slos = config.getoption("sglang_slo")
        if slos is not None:
            out["slos"] = tuple(parse_slo(s) for s in slos)
        obj = config.getoption("sglang_objective")
        if obj is not None:
            out["objective"] = parse_objective(obj)
        out["fail_on"] = tuple(parse_threshold(t) for t in config.getoption("sglang_fail_on") or ())
    except GrammarError as exc:
        raise pytest.UsageError(str(exc)) from None
    price = config.getoption("sglang_gpu_hour_price")
    if price is not None:
        try:
            out["gpu_hour_price"] = float(price)
        except ValueError:
            out["gpu_hour_price"] = -1.0
        if out["gpu_hour_price"] <= 0:
            raise pytest.UsageError(f"--sglang-gpu-hour-price={price!r} is not valid: give a price > 0 (e.g. 2.5).")
    baseline = config.getoption("sglang_baseline")
    if baseline:
        out["baseline"] = Path(baseline)
        if not out["baseline"].is_file():
            raise pytest.UsageError(f"--sglang-baseline={baseline!r}: no such report file.")
    elif out["fail_on"]:
        raise pytest.UsageError("--sglang-fail-on needs --sglang-baseline=REPORT.json to compare against.")
    repeats = config.getoption("sglang_repeats")
    if repeats is not None:
        if repeats < 1:
            raise pytest.UsageError(f"--sglang-repeats={repeats} is not valid: give 1 or more.")
        out["repeats"] = repeats
    procs = config.getoption("sglang_loadgen_procs")
    if procs is not None:
        if procs < 1:
            raise pytest.UsageError(f"--sglang-loadgen-procs={procs} is not valid: give 1 or more.")
        out["loadgen_procs"] = procs
    return out


def parse_options(config: pytest.Config) -> Options:
    return Options(
        **parse_grammar_options(config),
        backend=parse_backend(str(_opt(config, "sglang_backend", "sglang_backend") or "sim")),
        gpus=parse_gpus(_opt(config, "sglang_gpus", "sglang_gpus")),
        report_dir=Path(str(_opt(config, "sglang_report_dir", "sglang_report_dir") or "reports")),
        strict_slo=bool(_opt(config, "sglang_strict_slo", "sglang_strict_slo")),
        require_capacity=bool(config.getoption("sglang_require_capacity")),
        ready_timeout=parse_timeout(_opt(config, "sglang_ready_timeout", "sglang_ready_timeout")),
        launcher=config.getoption("sglang_launcher"),
    )
