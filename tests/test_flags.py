"""SGLang flag tables: resolution, values, argv/parser round trips, reference agreement, introspection."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.errors import FlagError, SuiteError
from pytest_sglang_tune.flags import (
    KNOWN_VERSIONS,
    NEWEST_VERSION,
    FlagTable,
    introspect_flag_table,
    load_flag_table,
    parse_human_readable_int,
    version_key,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
OLD, NEW = "0.5.5.post3", "0.5.23"


def _reference(version: str) -> list[dict[str, Any]]:
    path = REFERENCE / f"sglang-server-args-{version}.json"
    if not path.is_file():
        pytest.skip(f"reference data not found: {path} (the ../shared checkout beside the repo is absent)")
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_known_versions_are_sorted_and_newest_is_default() -> None:
    assert KNOWN_VERSIONS == (OLD, NEW)
    assert NEWEST_VERSION == NEW
    assert load_flag_table().version == NEW
    assert load_flag_table(None) is load_flag_table(NEW)  # cached
    assert load_flag_table(OLD).source == "shipped table"


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("0.5.5.post3", "0.5.23"),
        ("0.5.5", "0.5.5.post3"),
        ("0.5.24rc1", "0.5.24"),
        ("0.5.24.dev3", "0.5.24rc1"),
        ("0.5", "0.5.1"),
        ("v0.4.9", "0.5.0"),
    ],
)
def test_version_key_orders_versions(lower: str, higher: str) -> None:
    assert version_key(lower) < version_key(higher)
    assert sorted([higher, lower], key=version_key) == [lower, higher]


def test_version_key_treats_trailing_zeros_as_equal() -> None:
    assert version_key("0.5.0") == version_key("0.5")


def test_unknown_version_lists_known_ones() -> None:
    with pytest.raises(
        FlagError, match=r"no flag table for SGLang '0\.4\.0'; known versions: 0\.5\.5\.post3, 0\.5\.23"
    ):
        load_flag_table("0.4.0")


@pytest.mark.parametrize(
    ("version", "flag", "canonical"),
    [
        (NEW, "--tp-size", "--tp-size"),
        (NEW, "tp-size", "--tp-size"),
        (NEW, "tp_size", "--tp-size"),
        (NEW, "--tensor-parallel-size", "--tp-size"),  # alias
        (OLD, "--tp-size", "--tensor-parallel-size"),  # the other way round in 0.5.5.post3
        (NEW, "--mem-frac", "--mem-fraction-static"),  # argparse abbreviation
        (OLD, "--mem-frac", "--mem-fraction-static"),
        (NEW, "--model", "--model-path"),  # exact alias wins over being a prefix of --model-*
        (NEW, "--ep", "--ep-size"),
        (NEW, "--enable-hicache", "--enable-hierarchical-cache"),  # alias new in 0.5.23
        (OLD, "--cuda-graph-max-bs", "--cuda-graph-max-bs"),
        (NEW, "--cuda-graph-max-bs-dec", "--cuda-graph-max-bs-decode"),
        (OLD, "--stream-output", "--stream-output"),
        (NEW, "--incremental-streaming-output", "--incremental-streaming-output"),
        (NEW, "--no-enable-tf32-matmul", "--enable-tf32-matmul"),
        (NEW, "schedule-policy", "--schedule-policy"),
    ],
)
def test_resolve_accepts_names_aliases_and_prefixes(version: str, flag: str, canonical: str) -> None:
    assert load_flag_table(version).resolve(flag).name == canonical


@pytest.mark.parametrize(
    ("version", "flag", "fragments"),
    [
        (
            NEW,
            "--cuda-graph-max-bs",
            [
                "'--cuda-graph-max-bs' is ambiguous in SGLang 0.5.23",
                "--cuda-graph-max-bs-decode, --cuda-graph-max-bs-prefill",
                "split",
            ],
        ),
        (NEW, "--cuda-graph-bs", ["ambiguous", "--cuda-graph-bs-decode, --cuda-graph-bs-prefill"]),
        (
            NEW,
            "--stream-output",
            [
                "'--stream-output' (SGLang 0.5.5.post3) was renamed to --incremental-streaming-output",
                "SGLang 0.5.23",
            ],
        ),
        (
            OLD,
            "--incremental-streaming-output",
            ["SGLang 0.5.23 name", "0.5.5.post3 calls it --stream-output"],
        ),
        (OLD, "--cuda-graph-max-bs-decode", ["0.5.5.post3 calls it --cuda-graph-max-bs"]),
        (NEW, "--nsa-decode-backend", ["renamed to --dsa-decode-backend"]),
        (
            NEW,
            "--mem-fraction-statik",
            [
                "unknown SGLang flag '--mem-fraction-statik' for SGLang 0.5.23",
                "did you mean --mem-fraction-static?",
            ],
        ),
        (NEW, "--torchao-config", ["unknown", "(it exists in SGLang 0.5.5.post3)"]),
        (OLD, "--no-enable-tf32-matmul", ["unknown", "(it exists in SGLang 0.5.23)"]),
        (NEW, "--grpc-mode", ["'--grpc-mode' is deprecated in SGLang 0.5.23; use --smg-grpc-mode instead"]),
        (NEW, "--disable-cuda-graph", ["deprecated in SGLang 0.5.23", "--cuda-graph-backend-"]),
        (NEW, "--enable-dp-attention", ["deprecated", "use --attn-dp-size"]),
        (NEW, "--qwertyuiop", ["unknown SGLang flag '--qwertyuiop'", "sglang.launch_server --help"]),
        (NEW, "--tp-size=2", ["give the value separately"]),
        (NEW, "--enable", ["ambiguous", "--enable-adaptive-dispatch-to-encoder, ", " more"]),
        (NEW, " -- ", ["empty SGLang flag name"]),
    ],
)
def test_resolve_errors_name_flag_version_and_suggestion(
    version: str, flag: str, fragments: list[str]
) -> None:
    with pytest.raises(FlagError) as info:
        load_flag_table(version).resolve(flag)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_flag_error_is_a_suite_error_with_location() -> None:
    table = load_flag_table(NEW)
    with pytest.raises(FlagError) as info:
        table.resolve("--mem-fraction-statik", where="suites/tune_x.yaml:12")
    assert isinstance(info.value, SuiteError)
    assert (info.value.path, info.value.line) == ("suites/tune_x.yaml", 12)
    assert str(info.value).startswith("suites/tune_x.yaml:12: unknown SGLang flag")
    with pytest.raises(FlagError, match=r"^suites/tune_x\.py: "):
        table.resolve("--nope", where="suites/tune_x.py")


@pytest.mark.parametrize(
    ("version", "flag", "value", "expected"),
    [
        (NEW, "--tp-size", 2, 2),
        (NEW, "--tp-size", "4", 4),
        (NEW, "--tp-size", 8.0, 8),
        (NEW, "--mem-fraction-static", 0.85, 0.85),
        (NEW, "--mem-fraction-static", 1, 1.0),
        (NEW, "--mem-fraction-static", "0.7", 0.7),
        (NEW, "--schedule-policy", "lpm", "lpm"),
        (NEW, "--enable-metrics", True, True),
        (NEW, "--enable-metrics", "false", False),
        (NEW, "--enable-tf32-matmul", None, None),  # BooleanOptionalAction: unset
        (NEW, "--context-length", "32k", 32000),
        (NEW, "--context-length", "4Ki", 4096),
        (NEW, "--max-prefill-tokens", "25.6k", 25600),
        (OLD, "--context-length", 8192, 8192),
        (NEW, "--cuda-graph-bs-decode", [1, 2, "4"], [1, 2, 4]),
        (NEW, "--cuda-graph-bs-decode", 8, [8]),
        (NEW, "--lora-target-modules", ["q_proj", "v_proj"], ["q_proj", "v_proj"]),
        (NEW, "--sidecar-args", '["a", 1]', ["a", 1]),
        (NEW, "--preferred-sampling-params", {"temperature": 0}, {"temperature": 0}),
        (NEW, "--preferred-sampling-params", '{"top_p": 0.9}', {"top_p": 0.9}),
        (NEW, "--served-model-name", "llama", "llama"),
        (NEW, "--revision", 1.5, "1.5"),
        (NEW, "--chunked-prefill-size", None, None),
        (NEW, "--dsa-triton-union", 2, 2),
    ],
)
def test_coerce_converts_to_canonical_values(
    version: str, flag: str, value: object, expected: object
) -> None:
    table = load_flag_table(version)
    out = table.coerce(table.resolve(flag), value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize(
    ("flag", "value", "fragments"),
    [
        (
            "--schedule-policy",
            "foo",
            [
                "'foo' is not a valid value of SGLang flag --schedule-policy (SGLang 0.5.23)",
                "choose one of: lpm, random, fcfs",
            ],
        ),
        ("--schedule-policy", "lpmm", ["did you mean 'lpm'?"]),
        ("--tp-size", "two", ["--tp-size (SGLang 0.5.23) expects an integer; got str 'two'"]),
        ("--tp-size", 1.5, ["expects an integer"]),
        ("--tp-size", True, ["expects an integer; got bool True"]),
        ("--mem-fraction-static", [0.8], ["expects a number"]),
        ("--enable-metrics", "yes", ["--enable-metrics (SGLang 0.5.23) is a switch: give true or false"]),
        ("--enable-metrics", 1, ["is a switch"]),
        ("--enable-metrics", None, ["is a switch"]),
        ("--context-length", "1.5Ki", ["expects an integer (suffixes like 32k or 4Ki allowed)"]),
        ("--cuda-graph-bs-decode", [], ["needs at least one value"]),
        ("--cuda-graph-bs-decode", [1, "x"], ["expects an integer"]),
        ("--lora-target-modules", ["q_proj", "nope"], ["choose one of: q_proj"]),
        ("--sidecar-args", '{"a": 1}', ["expects a JSON list"]),
        ("--preferred-sampling-params", "{not json", ["expects JSON"]),
        ("--json-model-override-args", {"a": 1}, ["expects a string", "quoted JSON string"]),
        ("--dsa-triton-union", 3, ["choose one of: 0, 2, 4"]),
    ],
)
def test_coerce_rejects_bad_values(flag: str, value: object, fragments: list[str]) -> None:
    table = load_flag_table(NEW)
    with pytest.raises(FlagError) as info:
        table.coerce(table.resolve(flag), value, where="suites/tune_x.yaml:3")
    assert str(info.value).startswith("suites/tune_x.yaml:3: ")
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("-1", -1),
        ("1k", 1000),
        ("1M", 10**6),
        ("2G", 2 * 10**9),
        ("1Ki", 1024),
        ("3Mi", 3 * 2**20),
        ("25.6k", 25600),
        (" 7 ", 7),
    ],
)
def test_parse_human_readable_int(text: str, expected: int) -> None:
    assert parse_human_readable_int(text) == expected


@pytest.mark.parametrize("text", ["1K", "1.5", "1.5Ki", "0.0001k", "k", "1 kb", ""])
def test_parse_human_readable_int_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_human_readable_int(text)


def test_normalize_uses_canonical_names_and_coerces() -> None:
    table = load_flag_table(NEW)
    out = table.normalize(
        {"tp_size": "2", "mem-frac": 0.85, "--schedule-policy": "lpm", "no-enable-tf32-matmul": True}
    )
    assert out == {
        "--tp-size": 2,
        "--mem-fraction-static": 0.85,
        "--schedule-policy": "lpm",
        "--enable-tf32-matmul": False,  # --no-x: true means x is false
    }
    assert load_flag_table(OLD).normalize({"tp-size": 2}) == {"--tensor-parallel-size": 2}


def test_normalize_rejects_the_same_flag_twice() -> None:
    with pytest.raises(FlagError, match="'tp-size' and 'tensor-parallel-size' both set --tp-size"):
        load_flag_table(NEW).normalize({"tp-size": 2, "tensor-parallel-size": 4}, where="s.yaml:1")


def test_normalize_reports_the_first_bad_flag_with_location() -> None:
    with pytest.raises(FlagError, match=r"^s\.yaml:9: .*'--cuda-graph-max-bs' is ambiguous"):
        load_flag_table(NEW).normalize({"tp-size": 2, "cuda-graph-max-bs": 64}, where="s.yaml:9")


def test_defaults_and_is_default() -> None:
    table = load_flag_table(NEW)
    defaults = table.defaults()
    assert defaults["--tp-size"] == 1
    assert defaults["--schedule-policy"] == "fcfs"
    assert defaults["--mem-fraction-static"] is None
    assert len(defaults) == len(table.flags)
    assert table.is_default("tp_size", 1)
    assert table.is_default("--schedule-policy", "fcfs")
    assert not table.is_default("--schedule-policy", "lpm")
    assert table.is_default("--enable-metrics", False)
    assert not table.is_default("--mem-fraction-static", 0.85)


@pytest.mark.parametrize(
    ("version", "flags", "argv"),
    [
        (NEW, {"tp-size": 2, "enable-metrics": True}, ["--tp-size", "2", "--enable-metrics"]),
        (NEW, {"enable-metrics": False, "disable-radix-cache": True}, ["--disable-radix-cache"]),
        (
            NEW,
            {"mem-frac": 0.85, "context-length": "32k"},
            ["--mem-fraction-static", "0.85", "--context-length", "32000"],
        ),
        (NEW, {"cuda-graph-bs-decode": [1, 2, 4]}, ["--cuda-graph-bs-decode", "1", "2", "4"]),
        (NEW, {"chunked-prefill-size": -1}, ["--chunked-prefill-size=-1"]),
        (NEW, {"enable-tf32-matmul": False}, ["--no-enable-tf32-matmul"]),
        (NEW, {"enable-tf32-matmul": True}, ["--enable-tf32-matmul"]),
        (NEW, {"enable-tf32-matmul": None, "max-running-requests": None}, []),
        (
            NEW,
            {"preferred-sampling-params": {"top_p": 0.9}},
            ["--preferred-sampling-params", '{"top_p":0.9}'],
        ),
        (
            OLD,
            {"tp_size": 2, "cuda-graph-max-bs": 64},
            ["--tensor-parallel-size", "2", "--cuda-graph-max-bs", "64"],
        ),
    ],
)
def test_to_argv(version: str, flags: dict[str, object], argv: list[str]) -> None:
    assert load_flag_table(version).to_argv(flags) == argv


def test_to_argv_store_false() -> None:
    spec_table = FlagTable.from_data(
        {
            "format": 1,
            "version": "9.9",
            "flags": {"--keep": {"action": "store_false", "default": True, "type": "bool"}},
        },
        source="test",
    )
    assert spec_table.to_argv({"--keep": False}) == ["--keep"]
    assert spec_table.to_argv({"--keep": True}) == []
    assert spec_table.build_parser().parse_args(["--keep"]).keep is False
    assert spec_table.build_parser().parse_args([]).keep is True


@pytest.mark.parametrize(
    ("version", "flags", "expected"),
    [
        (
            NEW,
            {
                "model-path": "m",
                "tp-size": 2,
                "mem-frac": 0.85,
                "schedule-policy": "lpm",
                "enable-metrics": True,
                "cuda-graph-bs-decode": [1, 2, 4],
                "chunked-prefill-size": -1,
                "no-enable-tf32-matmul": True,
                "context-length": "4Ki",
                "preferred-sampling-params": {"top_k": 5},
                "lora-target-modules": ["q_proj"],
            },
            {
                "model_path": "m",
                "tp_size": 2,
                "mem_fraction_static": 0.85,
                "schedule_policy": "lpm",
                "enable_metrics": True,
                "cuda_graph_bs_decode": [1, 2, 4],
                "chunked_prefill_size": -1,
                "enable_tf32_matmul": False,
                "context_length": 4096,
                "preferred_sampling_params": {"top_k": 5},
                "lora_target_modules": ["q_proj"],
                "disable_radix_cache": False,
                "dp_size": 1,
            },
        ),
        (
            OLD,
            {
                "model": "m",
                "tp": 4,
                "dp-size": 2,
                "cuda-graph-max-bs": 160,
                "stream-output": True,
                "hybrid-kvcache-ratio": 0.25,
            },
            {
                "model_path": "m",
                "tp_size": 4,
                "dp_size": 2,
                "cuda_graph_max_bs": 160,
                "stream_output": True,
                "hybrid_kvcache_ratio": 0.25,
                "schedule_policy": "fcfs",
            },
        ),
    ],
)
def test_build_parser_round_trips_to_argv(
    version: str, flags: dict[str, object], expected: dict[str, object]
) -> None:
    table = load_flag_table(version)
    namespace = vars(table.build_parser().parse_args(table.to_argv(flags)))
    assert {k: namespace[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("version", "argv", "message"),
    [
        (NEW, ["--model-path", "m", "--cuda-graph-max-bs", "8"], "ambiguous option: --cuda-graph-max-bs"),
        (NEW, ["--model-path", "m", "--stream-output"], "unrecognized arguments: --stream-output"),
        (NEW, ["--model-path", "m", "--schedule-policy", "foo"], "invalid choice: 'foo'"),
        (NEW, ["--model-path", "m", "--context-length", "1.5Ki"], "invalid human_readable_int value"),
        (NEW, ["--tp-size", "2"], "the following arguments are required: --model-path"),
        (OLD, ["--model-path", "m", "--incremental-streaming-output"], "unrecognized arguments"),
    ],
)
def test_build_parser_rejects_like_sglang(
    version: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        load_flag_table(version).build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_build_parser_accepts_abbreviations_and_aliases() -> None:
    ns = (
        load_flag_table(NEW)
        .build_parser()
        .parse_args(["--model", "m", "--tensor-parallel-size", "2", "--mem-frac", "0.8"])
    )
    assert (ns.model_path, ns.tp_size, ns.mem_fraction_static) == ("m", 2, 0.8)
    ns = load_flag_table(OLD).build_parser().parse_args(["--model", "m", "--hybrid-kvcache-ratio"])
    assert ns.hybrid_kvcache_ratio == 0.5  # nargs="?" with const


@pytest.mark.parametrize("version", [OLD, NEW])
def test_shipped_tables_agree_with_reference(version: str) -> None:
    reference = _reference(version)
    table = load_flag_table(version)
    assert sorted(table.flags) == sorted(r["name"] for r in reference)
    for rec in reference:
        spec = table.flags[rec["name"]]
        got = (
            spec.option_strings,
            spec.dest,
            spec.type,
            spec.action,
            spec.nargs,
            spec.default,
            spec.choices,
            spec.required,
        )
        want = (
            tuple(rec["option_strings"]),
            rec["dest"],
            rec["type"],
            rec["action"],
            rec["nargs"],
            rec["default"],
            tuple(rec["choices"]) if rec["choices"] is not None else None,
            rec["required"],
        )
        assert got == want, rec["name"]
        if rec.get("deprecated"):
            assert spec.deprecated, rec["name"]
        if spec.deprecated and not rec.get("deprecated"):
            assert "deprecated" in (rec.get("help") or "").lower(), rec["name"]


def test_shipped_tables_are_up_to_date_with_the_generator(tmp_path: Path) -> None:
    _reference(NEW)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "make_flag_tables.py"),
            "--reference",
            str(REFERENCE),
            "--check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "make_flag_tables.py"),
            "--reference",
            str(REFERENCE),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    written = json.loads((out / f"sglang-flags-{NEW}.json").read_text())
    assert written["renamed"]["--stream-output"] == {"in": OLD, "to": ["--incremental-streaming-output"]}
    assert "help" not in (out / f"sglang-flags-{NEW}.json").read_text()


def _fake_sglang(root: Path, version: str, server_args: str, init_extra: str = "") -> Path:
    pkg = root / "sglang"
    (pkg / "srt").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n{init_extra}")
    (pkg / "srt" / "__init__.py").write_text("")
    (pkg / "srt" / "server_args.py").write_text(textwrap.dedent(server_args))
    return root


FAKE_SERVER_ARGS = """
    import dataclasses

    @dataclasses.dataclass
    class ServerArgs:
        tp_size: int = 1
        incremental_streaming_output: bool = False

        @staticmethod
        def add_cli_args(parser):
            parser.add_argument("--tensor-parallel-size", "--tp-size", type=int, default=1, help="TP.")
            parser.add_argument("--incremental-streaming-output", action="store_true", help="Segments.")
"""


def test_introspection_returns_none_without_sglang() -> None:
    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is importable by this interpreter")
    assert introspect_flag_table(sys.executable) is None


def test_introspection_of_a_fake_sglang_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_fake_sglang(tmp_path, "0.5.30", FAKE_SERVER_ARGS)))
    table = introspect_flag_table(sys.executable, timeout=30)
    assert table is not None
    assert table.version == "0.5.30"
    assert table.source == f"introspected from {sys.executable}"
    assert sorted(table.flags) == ["--incremental-streaming-output", "--tensor-parallel-size"]
    tp = table.resolve("--tp")
    assert (tp.name, tp.dest, tp.field, tp.type, tp.default) == (
        "--tensor-parallel-size",
        "tensor_parallel_size",
        "tp_size",
        "int",
        1,
    )
    assert table.resolve("incremental-streaming-output").action == "store_true"
    with pytest.raises(FlagError, match=r"was renamed to --incremental-streaming-output by SGLang 0\.5\.30"):
        table.resolve("--stream-output")  # known rename carried over from the shipped tables
    with pytest.raises(FlagError, match=r"unknown SGLang flag '--mem-fraction-static' for SGLang 0\.5\.30"):
        table.resolve("--mem-fraction-static")
    argv = table.to_argv({"tp-size": 2, "incremental-streaming-output": True})
    assert argv == ["--tensor-parallel-size", "2", "--incremental-streaming-output"]
    ns = table.build_parser().parse_args(argv)
    assert (ns.tp_size, ns.incremental_streaming_output) == (2, True)


def test_introspection_derives_deprecation_from_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_args = """
        class ServerArgs:
            @staticmethod
            def add_cli_args(parser):
                parser.add_argument("--old-knob", action="store_true", help="(Deprecated, use --new-knob)")
                parser.add_argument("--new-knob", choices=["a", "b"], default="a")
    """
    monkeypatch.setenv("PYTHONPATH", str(_fake_sglang(tmp_path, "1.0.0", server_args)))
    table = introspect_flag_table(sys.executable)
    assert table is not None
    with pytest.raises(
        FlagError, match=r"'--old-knob' is deprecated in SGLang 1\.0\.0; use --new-knob instead"
    ):
        table.resolve("--old-knob")
    with pytest.raises(FlagError, match="choose one of: a, b"):
        table.normalize({"new-knob": "c"})


def test_introspection_treats_a_broken_import_as_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", str(_fake_sglang(tmp_path, "1.0", FAKE_SERVER_ARGS, "raise RuntimeError('no GPU')\n"))
    )
    assert introspect_flag_table(sys.executable) is None


def test_introspection_reports_a_crashing_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_args = """
        class ServerArgs:
            @staticmethod
            def add_cli_args(parser):
                raise ValueError("boom in add_cli_args")
    """
    monkeypatch.setenv("PYTHONPATH", str(_fake_sglang(tmp_path, "1.0", server_args)))
    with pytest.raises(
        FlagError, match=r"(?s)introspecting SGLang flags with .* failed \(exit 1\).*boom in add_cli_args"
    ):
        introspect_flag_table(sys.executable)


def test_introspection_with_a_missing_interpreter_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FlagError, match="cannot introspect SGLang flags with"):
        introspect_flag_table(str(tmp_path / "no-such-python"))
