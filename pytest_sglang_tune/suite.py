"""Suite files (``suites/tune_*.yaml``) → ``Suite`` values. Every error names ``file:line``, the field and the value.

A suite::

    name: qwen8b-chat                    # optional; default: the file name without tune_ and .yaml
    sglang_version: "0.5.23"             # optional; default: the newest known version
    model: {path: Qwen/Qwen3-8B, served_name: qwen3-8b}
    backends:                            # per-backend deployment settings
      sim: {gpu: h100_sxm}
      local: {launcher: "python -m sglang.launch_server"}
      docker: {image: "lmsysorg/sglang:v0.5.23-cu129"}
      ome: {runtime: srt-qwen3-8b, model: qwen3-8b}
    server:
      fixed: {enable-metrics: true}
      grid: {mem-fraction-static: [0.8, 0.9], schedule-policy: [lpm, fcfs]}
      paired: {tp-size: [1, 2], dp-size: [2, 1]}
      constraints: ["tp-size * dp-size <= 4"]
    workloads:
      - name: chat
        scenario: D(1000,250)            # or input_len/output_len: 1000 / "N(1000,100)"
        num_requests: 64
        concurrency: [1, 16, 64]         # and/or request_rate: [2, 4]
    slos: ["ttft_ms.p99 <= 2000", "itl_ms.p95 <= 50"]
    objective: {maximize: output_throughput_per_gpu}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.registry import BUILTIN_NAMES, SETTINGS_FIELDS
from pytest_sglang_tune.errors import GrammarError, SuiteError
from pytest_sglang_tune.grammar import DEFAULT_OBJECTIVE, SLO, Objective, parse_objective, parse_slo
from pytest_sglang_tune.loadgen.workload import (
    ENDPOINTS,
    LengthDist,
    SharedPrefix,
    Workload,
    loads_from,
    parse_scenario,
)
from pytest_sglang_tune.suite_search import max_load_search, search_target
from pytest_sglang_tune.yamlpos import Pos, line_of, load_yaml_with_lines

TOP_FIELDS = ("name", "description", "sglang_version", "model", "backends", "server", "workloads", "slos",
              "objective", "seed", "gpu_hour_price", "repeats", "redeploy", "search")
MODEL_FIELDS = ("path", "served_name")
SERVER_FIELDS = ("fixed", "grid", "paired", "constraints")
WORKLOAD_FIELDS = ("name", "scenario", "input_len", "output_len", "endpoint", "num_requests", "warmup_requests",
                   "concurrency", "request_rate", "shared_prefix", "seed", "max_duration_s", "dataset", "turns",
                   "burstiness", "warmup_s", "cooldown_s", "trace", "time_scale", "max_requests", "window", "load")
TRACE_FIELDS = ("trace", "time_scale", "max_requests", "window")
NOT_WITH_TRACE: dict[str, str] = {
    "scenario": "lengths come from the trace", "input_len": "lengths come from the trace",
    "output_len": "lengths come from the trace", "dataset": "prompts come from the trace",
    "shared_prefix": "shared content comes from the trace's hash_ids", "turns": "each trace line is one request",
    "num_requests": "the trace's lines are the requests; use max_requests or window",
    "request_rate": "arrivals come from the trace; scale them with time_scale",
    "burstiness": "arrivals come from the trace; scale them with time_scale",
}
_BACKEND_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_WORKLOAD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Suite:
    """A parsed suite file. ``server_*`` hold raw (unvalidated) flag names; ``space.expand`` validates them."""

    path: Path
    name: str
    model_path: str
    served_name: str
    sglang_version: str | None
    backends: Mapping[str, Mapping[str, Any]]
    fixed: Mapping[str, Any]
    grid: Mapping[str, Sequence[Any]]
    paired: Mapping[str, Sequence[Any]]
    constraints: tuple[str, ...]
    workloads: tuple[Workload, ...]
    slos: tuple[SLO, ...]
    objective: Objective
    gpu_hour_price: float | None = None
    repeats: int = 1
    redeploy: bool = False
    search_target: tuple[str, str] | None = None  # (workload, load label) a search scores configs at
    positions: Pos = field(default_factory=dict, compare=False, repr=False)

    def where(self, *fld: str | int) -> str:
        """``file:line`` of a field, for error messages."""
        line = line_of(self.positions, fld)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, message: str, *fld: str | int) -> SuiteError:
        dotted = ".".join(str(f) for f in fld) if fld else None
        return SuiteError(message, path=str(self.path), line=line_of(self.positions, fld), field=dotted)

    def backend_settings(self, backend: str) -> Mapping[str, Any]:
        return self.backends.get(backend, {})


class _Ctx:
    def __init__(self, path: Path, pos: Pos) -> None:
        self.path = path
        self.pos = pos

    def err(self, message: str, *fld: str | int) -> SuiteError:
        dotted = ".".join(str(f) for f in fld) if fld else None
        return SuiteError(message, path=str(self.path), line=line_of(self.pos, fld), field=dotted)

    def mapping(self, value: Any, *fld: str | int, allowed: Sequence[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.err(f"expected a mapping, got {type(value).__name__} {value!r}", *fld)
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    raise self.err(f"unknown field {key!r}; allowed fields: {', '.join(allowed)}", *fld, key)
        return dict(value)

    def int_(self, value: Any, *fld: str | int, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.err(f"expected an integer >= {minimum}, got {value!r}", *fld)
        return value

    def number(self, value: Any, *fld: str | int) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.err(f"expected a positive number, got {value!r}", *fld)
        return float(value)


def default_suite_name(path: Path) -> str:
    stem = path.stem
    return stem[len("tune_"):] if stem.startswith("tune_") else stem


def load_suite(path: Path | str, text: str | None = None) -> Suite:
    """Read and check a suite file (its structure, workloads, SLOs and objective; flags are checked in ``space``)."""
    path = Path(path)
    data, pos = load_yaml_with_lines(path, text)
    return suite_from_data(data, path, pos)


def suite_from_data(data: Any, path: Path, pos: Pos | None = None, *, require_workloads: bool = True) -> Suite:
    """Build a Suite from already-parsed data (YAML, or a Python suite's ``sglang_tune`` marker)."""
    pos = pos or {}
    c = _Ctx(path, pos)
    if data is None:
        raise c.err("the suite file is empty")
    top = c.mapping(data, allowed=TOP_FIELDS)

    model = top.get("model")
    if model is None:
        raise c.err("missing field 'model' (the model path or id, e.g. model: {path: Qwen/Qwen3-8B})")
    if isinstance(model, str):
        model = {"path": model}
    model = c.mapping(model, "model", allowed=MODEL_FIELDS)
    model_path = model.get("path")
    if not isinstance(model_path, str) or not model_path:
        raise c.err(f"model.path must be a non-empty string, got {model_path!r}", "model", "path")
    served = model.get("served_name") or model_path
    if not isinstance(served, str):
        raise c.err(f"model.served_name must be a string, got {served!r}", "model", "served_name")

    version = top.get("sglang_version")
    if version is not None:
        version = str(version)

    backends: dict[str, dict[str, Any]] = {}
    for bname, bset in c.mapping(top.get("backends"), "backends").items():
        if not isinstance(bname, str) or not _BACKEND_NAME.match(bname):
            raise c.err(f"backend name {bname!r} is not valid; built-in backends: {', '.join(BUILTIN_NAMES)}",
                        "backends", str(bname))
        # a plugin's backend (pytest_sglang_tune_make_backend) takes its section as it is
        backends[bname] = c.mapping(bset, "backends", bname, allowed=SETTINGS_FIELDS.get(bname))
    sim_gpu = backends.get("sim", {}).get("gpu")
    if sim_gpu is not None:  # the simulated GPUs (sim/gpus.py): a typo is a collection error, not a failed deploy
        from pytest_sglang_tune.sim.gpus import GPU_ALIASES, GPUS, resolve_gpu

        if not isinstance(sim_gpu, str) or resolve_gpu(sim_gpu) is None:
            raise c.err(f"backends.sim.gpu {sim_gpu!r} is not a simulated GPU; choose one of: "
                        f"{', '.join([*GPUS, *GPU_ALIASES])}", "backends", "sim", "gpu")

    server = c.mapping(top.get("server"), "server", allowed=SERVER_FIELDS)
    fixed = c.mapping(server.get("fixed"), "server", "fixed")
    grid = c.mapping(server.get("grid"), "server", "grid")
    for flag, values in grid.items():
        if not isinstance(values, list):
            raise c.err(f"grid values must be a list, got {values!r} (use server.fixed for a single value)",
                        "server", "grid", flag)
        if not values:
            raise c.err("empty grid: the list of values is empty; give at least one value", "server", "grid", flag)
    paired = c.mapping(server.get("paired"), "server", "paired")
    lengths = set()
    for flag, values in paired.items():
        if not isinstance(values, list) or not values:
            raise c.err(f"paired values must be a non-empty list, got {values!r}", "server", "paired", flag)
        lengths.add(len(values))
    if len(lengths) > 1:
        detail = ", ".join(f"{k}: {len(v)}" for k, v in paired.items())
        raise c.err(f"paired lists must all have the same length (they vary together); got {detail}",
                    "server", "paired")
    seen: dict[str, str] = {}
    for section, flags in (("fixed", fixed), ("grid", grid), ("paired", paired)):
        for flag in flags:
            if flag in seen:
                raise c.err(f"flag {flag!r} appears in both server.{seen[flag]} and server.{section}",
                            "server", section, flag)
            seen[flag] = section
    constraints_raw = server.get("constraints") or []
    if isinstance(constraints_raw, str):
        constraints_raw = [constraints_raw]
    if not isinstance(constraints_raw, list) or not all(isinstance(x, str) for x in constraints_raw):
        raise c.err(f"constraints must be a list of expressions, got {constraints_raw!r}", "server", "constraints")

    suite_seed = top.get("seed", 0)
    workloads_raw = top.get("workloads")
    if not require_workloads and workloads_raw is None:
        workloads_raw = []
    elif not isinstance(workloads_raw, list) or not workloads_raw:
        raise c.err("workloads must be a non-empty list of workloads", "workloads")
    workloads = []
    names: set[str] = set()
    for i, w in enumerate(workloads_raw):
        wl = _parse_workload(c, w, i, suite_seed)
        if wl.name in names:
            raise c.err(f"duplicate workload name {wl.name!r}", "workloads", i, "name")
        names.add(wl.name)
        workloads.append(wl)

    slos_raw = top.get("slos") or []
    if isinstance(slos_raw, str):
        slos_raw = [slos_raw]
    if not isinstance(slos_raw, list):
        raise c.err(f"slos must be a list of '<metric> <op> <number>' strings, got {slos_raw!r}", "slos")
    slos = []
    for i, s in enumerate(slos_raw):
        try:
            slos.append(parse_slo(s))
        except GrammarError as exc:
            raise c.err(str(exc), "slos", i) from None
    try:
        objective = parse_objective(top.get("objective") or DEFAULT_OBJECTIVE)
    except GrammarError as exc:
        raise c.err(str(exc), "objective") from None

    name = top.get("name") or default_suite_name(path)
    price = top.get("gpu_hour_price")
    redeploy = top.get("redeploy", False)
    if not isinstance(redeploy, bool):
        raise c.err(f"redeploy must be true or false, got {redeploy!r}", "redeploy")
    target = search_target(c, top.get("search"), workloads)
    return Suite(
        search_target=target,
        repeats=c.int_(top.get("repeats", 1), "repeats", minimum=1), redeploy=redeploy,
        gpu_hour_price=c.number(price, "gpu_hour_price") if price is not None else None,
        path=path, name=str(name), model_path=model_path, served_name=served, sglang_version=version,
        backends=backends, fixed=fixed, grid=grid, paired=paired, constraints=tuple(constraints_raw),
        workloads=tuple(workloads), slos=tuple(slos), objective=objective, positions=pos,
    )


def _lengths(c: _Ctx, w: Mapping[str, Any], i: int) -> tuple[LengthDist, LengthDist]:
    scenario = w.get("scenario")
    if scenario is not None:
        if "input_len" in w or "output_len" in w:
            raise c.err("give either scenario or input_len/output_len, not both", "workloads", i, "scenario")
        try:
            return parse_scenario(str(scenario))
        except SuiteError as exc:
            raise c.err(exc.bare_message, "workloads", i, "scenario") from None
    dists = []
    for key in ("input_len", "output_len"):
        v = w.get(key)
        if v is None:
            raise c.err(f"missing {key} (or give scenario: 'D(in,out)')", "workloads", i)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            dists.append(LengthDist("D", float(v)))
            continue
        text = str(v).strip()
        # one-sided forms: "N(1000,100)" / "U(900,1100)"
        m = re.match(r"^([NU])\((.+)\)$", text)
        try:
            if m:
                a, _ = parse_scenario(f"{m.group(1)}({m.group(2)})/({m.group(2)})")
                dists.append(a)
            else:
                raise SuiteError("")
        except SuiteError:
            raise c.err(f"{v!r} is not a valid length; use an integer >= 1, 'N(mean,std)' or 'U(min,max)'",
                        "workloads", i, key) from None
    return dists[0], dists[1]


def _num_list(c: _Ctx, value: Any, kind: str, *fld: str | int) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise c.err(f"{kind} list is empty", *fld)
    out: list[Any] = []
    for v in values:
        if kind == "concurrency":
            out.append(c.int_(v, *fld, minimum=1))
        else:
            out.append(c.number(v, *fld))
    return out


def _common(c: _Ctx, w: Mapping[str, Any], i: int, suite_seed: Any) -> dict[str, Any]:
    """The fields every kind of workload has: endpoint, seed, warmup, time windows, max_duration_s."""
    endpoint = w.get("endpoint", "chat")
    if endpoint not in ENDPOINTS:
        raise c.err(f"endpoint {endpoint!r} is not valid; choose one of {', '.join(ENDPOINTS)}",
                    "workloads", i, "endpoint")
    out: dict[str, Any] = {"endpoint": endpoint}
    for key in ("warmup_s", "cooldown_s"):
        v = w.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise c.err(f"expected a number of seconds >= 0, got {v!r}", "workloads", i, key)
        out[key] = float(v)
    max_dur = w.get("max_duration_s")
    out["max_duration_s"] = c.number(max_dur, "workloads", i, "max_duration_s") if max_dur is not None else None
    out["seed"] = c.int_(w.get("seed", suite_seed), "workloads", i, "seed", minimum=0)
    out["warmup_requests"] = c.int_(w.get("warmup_requests", 2), "workloads", i, "warmup_requests", minimum=0)
    return out


def _parse_workload(c: _Ctx, raw: Any, i: int, suite_seed: Any) -> Workload:
    w = c.mapping(raw, "workloads", i, allowed=WORKLOAD_FIELDS)
    name = w.get("name") or f"workload{i}"
    if not isinstance(name, str) or not _WORKLOAD_NAME.match(name):
        raise c.err(f"workload name {name!r} must be letters, digits, '_', '-' or '.'", "workloads", i, "name")
    if any(k in w for k in TRACE_FIELDS):
        return _trace_workload(c, w, i, name, _common(c, w, i, suite_seed))
    dataset = w.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, str) or not dataset.strip():
            raise c.err(f"dataset {dataset!r} must be the path of a ShareGPT-format JSON file", "workloads", i,
                        "dataset")
        for key in ("scenario", "input_len", "shared_prefix"):
            if key in w:
                raise c.err(f"{key} cannot be given with dataset: prompts come from the dataset (output_len "
                            "may override the reference output lengths)", "workloads", i, key)
        ds_path = Path(dataset).expanduser()
        if not ds_path.is_absolute():
            ds_path = c.path.parent / ds_path
        if not ds_path.is_file():
            raise c.err(f"dataset {dataset!r} not found (looked for {ds_path})", "workloads", i, "dataset")
        dataset = str(ds_path)
        inp = LengthDist("D", 0.0)  # loadgen.workload.FROM_DATASET: lengths from the dataset's records
        out = _lengths(c, {"input_len": 1, "output_len": w["output_len"]}, i)[1] if "output_len" in w \
            else LengthDist("D", 0.0)
    else:
        inp, out = _lengths(c, w, i)
    common = _common(c, w, i, suite_seed)
    endpoint = common["endpoint"]
    conc = w.get("concurrency")
    rate = w.get("request_rate")
    max_load = max_load_search(c, w.get("load"), i) if "load" in w else None
    if max_load is not None:
        for key in ("concurrency", "request_rate"):
            if key in w:
                raise c.err(f"{key} cannot be given with load: the load search chooses the levels "
                            f"(load: {{search: max_within_slo, {max_load.kind}: [low, high]}})", "workloads", i, key)
        loads = [max_load.load(max_load.low)]
    elif conc is None and rate is None:
        raise c.err("a workload needs concurrency (a list of levels) or request_rate (req/s), or both",
                    "workloads", i)
    else:
        concs = _num_list(c, conc, "concurrency", "workloads", i, "concurrency") if conc is not None else []
        rates = _num_list(c, rate, "request_rate", "workloads", i, "request_rate") if rate is not None else []
        try:
            loads = loads_from(concs, rates)
        except SuiteError as exc:
            raise c.err(exc.bare_message, "workloads", i) from None
    shared = w.get("shared_prefix")
    sp = None
    if shared is not None:
        sp_map = c.mapping(shared, "workloads", i, "shared_prefix", allowed=("groups", "prefix_len"))
        sp = SharedPrefix(
            groups=c.int_(sp_map.get("groups"), "workloads", i, "shared_prefix", "groups", minimum=1),
            prefix_len=c.int_(sp_map.get("prefix_len"), "workloads", i, "shared_prefix", "prefix_len", minimum=1),
        )
        if inp.kind == "D" and sp.prefix_len >= inp.a:
            raise c.err(f"prefix_len {sp.prefix_len} must be shorter than the input length {int(inp.a)}",
                        "workloads", i, "shared_prefix", "prefix_len")
    nreq = w.get("num_requests", 64)
    per_load: tuple[int, ...] = ()
    if isinstance(nreq, list):
        if len(nreq) != len(loads):
            raise c.err(f"num_requests has {len(nreq)} values but there are {len(loads)} load levels; give one "
                        "number, or one per load level", "workloads", i, "num_requests")
        per_load = tuple(c.int_(n, "workloads", i, "num_requests", minimum=1) for n in nreq)
        nreq = max(per_load)
    turns = c.int_(w.get("turns", 1), "workloads", i, "turns", minimum=1)
    if turns > 1 and endpoint != "chat":
        raise c.err(f"turns {turns} needs endpoint 'chat' (sessions carry the chat history), not {endpoint!r}",
                    "workloads", i, "turns")
    burst = c.number(w.get("burstiness", 1.0), "workloads", i, "burstiness")
    return Workload(
        dataset=dataset, turns=turns, burstiness=burst, **common,
        name=name, input_len=inp, output_len=out, num_requests_per_load=per_load,
        num_requests=c.int_(nreq, "workloads", i, "num_requests", minimum=1),
        loads=tuple(loads), shared_prefix=sp, max_load=max_load,
    )


def _trace_window(c: _Ctx, value: Any, i: int) -> tuple[float, float | None]:
    ok = isinstance(value, list) and len(value) == 2 and all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in value) and value[0] is not None
    if ok and value[0] >= 0 and (value[1] is None or value[1] > value[0]):
        return float(value[0]), None if value[1] is None else float(value[1])
    raise c.err(f"window {value!r} must be [start_s, end_s]: seconds from the trace's first request, "
                "0 <= start_s < end_s (end_s null: to the end of the trace)", "workloads", i, "window")


def _trace_workload(c: _Ctx, w: Mapping[str, Any], i: int, name: str, common: dict[str, Any]) -> Workload:
    """A trace replay. Its load levels are ``time_scale`` values (the trace's gaps times each), optionally capped
    by ``concurrency``; one of the two lists must be a single value."""
    from pytest_sglang_tune.loadgen.trace import TraceError, load_trace, select, trace_loads
    from pytest_sglang_tune.loadgen.workload import FROM_DATASET

    trace = w.get("trace")
    if trace is None:
        given = next(k for k in TRACE_FIELDS if k in w)
        raise c.err(f"{given} needs trace (the path of a Mooncake .jsonl or Azure .csv trace)", "workloads", i, given)
    if not isinstance(trace, str) or not trace.strip():
        raise c.err(f"trace {trace!r} must be the path of a Mooncake .jsonl or Azure .csv trace", "workloads", i,
                    "trace")
    for key, why in NOT_WITH_TRACE.items():
        if key in w:
            raise c.err(f"{key} cannot be given with trace: {why}", "workloads", i, key)
    path = Path(trace).expanduser()
    if not path.is_absolute():
        path = c.path.parent / path
    if not path.is_file():
        raise c.err(f"trace {trace!r} not found (looked for {path}; a relative path is relative to the suite "
                    "file's directory)", "workloads", i, "trace")
    scales = _num_list(c, w.get("time_scale", 1.0), "time_scale", "workloads", i, "time_scale")
    caps = _num_list(c, w["concurrency"], "concurrency", "workloads", i, "concurrency") if "concurrency" in w \
        else [None]
    if len(scales) > 1 and len(caps) > 1:
        raise c.err("with both time_scale and concurrency, one of them must be a single value (a trace replay's "
                    "load levels are its time_scale values, or its concurrency caps)", "workloads", i)
    window = _trace_window(c, w["window"], i) if w.get("window") is not None else None
    max_req = c.int_(w["max_requests"], "workloads", i, "max_requests", minimum=1) if "max_requests" in w else None
    try:
        reqs = select(load_trace(path), window, max_req)
    except TraceError as exc:
        if exc.field == "window":
            raise c.err(f"{exc.bare_message} (in {path})", "workloads", i, "window") from None
        raise c.err(str(exc), "workloads", i, "trace") from None
    loads = trace_loads(reqs, scales, caps)
    try:
        return Workload(name=name, input_len=FROM_DATASET, output_len=FROM_DATASET, num_requests=len(reqs),
                        loads=tuple(loads), trace=str(path), time_scale=scales[0], trace_window=window,
                        max_requests=max_req, **common)
    except SuiteError as exc:
        raise c.err(exc.bare_message, "workloads", i, exc.field or "trace") from None
