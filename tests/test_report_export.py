"""build_exports on hand-made reports: which exports each backend and suite gives, ties, and what is left out."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_sglang_tune.report.export import Source, build_exports, export_lines
from pytest_sglang_tune.report.run import write_exports
from pytest_sglang_tune.report.terminal import summary_lines
from pytest_sglang_tune.space import expand
from pytest_sglang_tune.suite import load_suite


def source(tmp_path: Path, backends: str) -> Source:
    path = tmp_path / "tune_s.yaml"
    path.write_text(f"""\
model: {{path: Qwen/Qwen3-8B, served_name: qwen}}
sglang_version: "0.5.23"
backends: {backends}
server:
  fixed: {{tp-size: 2}}
  grid: {{schedule-policy: [lpm, fcfs]}}
workloads:
  - {{name: chat, scenario: "D(64,16)", num_requests: 4, concurrency: [4]}}
slos: ["ttft_ms.p99 <= 1000"]
objective: {{maximize: output_throughput}}
""")
    suite = load_suite(path)
    return Source(suite, expand(suite))


def report_of(src: Source, scores: list[float], backend: str = "sim") -> dict[str, Any]:
    """Results and ranking of the configs of ``src`` in order, with ``scores`` (equal scores are tied)."""
    results, ranking = [], []
    for n, (cfg, score) in enumerate(zip(src.expansion.configs, scores, strict=True)):
        load = {"concurrency": 4, "request_rate": None}
        results.append({"suite": "s", "workload": {"name": "chat", "content_hash": "h"}, "config_id": cfg.config_id,
                        "load": load, "status": "passed", "slo_pass": True, "gpus_required": cfg.gpus,
                        "server_args": {k.lstrip("-"): v for k, v in cfg.server_args},
                        "image_digest": "img@sha256:abc" if backend == "docker" else None,
                        "metrics": {"output_throughput": score}})
        tied = scores.count(score) > 1
        ranking.append({"suite": "s", "workload": "chat", "load": load, "config_id": cfg.config_id,
                        "rank": 1 if tied else n + 1, "score": score, "slo_pass": True, "tied": tied})
    return {"run": {"backend": backend}, "suites": {"s": {}}, "results": results, "ranking": ranking}


def test_a_local_run_exports_the_launch_command_only(tmp_path: Path) -> None:
    src = source(tmp_path, "{local: {env: {NCCL_DEBUG: INFO, HF_TOKEN: hf_x1y2z3}}}")
    exports = build_exports(report_of(src, [20.0, 10.0]), {"s": src}, backend="local")
    e = exports["s"]["chat"]
    assert e["config_id"] == src.expansion.configs[0].config_id and e["tied_with"] == [] and e["gpus"] == 2
    assert e["docker_run"] is None and e["inference_service_yaml"] is None and e["inference_service_file"] is None
    words = shlex.split(e["launch_command"])
    assert words[0] == "NCCL_DEBUG=INFO" and "hf_x1y2z3" not in e["launch_command"]   # HF_TOKEN: from the shell
    assert words[1:] == ["python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3-8B", "--host", "0.0.0.0",
                         "--port", "30000", *src.expansion.flags.to_argv(src.expansion.configs[0].args),
                         "--served-model-name", "qwen"]
    assert export_lines({"exports": exports}, Path("reports/r1")) == [
        f"export the winner of s/chat ({e['label']}): reports/r1/report.html#export-s-chat"]
    assert write_exports({"exports": exports}, tmp_path) == {} and not list(tmp_path.glob("winner-*"))


def test_a_tie_exports_the_first_and_lists_the_others(tmp_path: Path) -> None:
    src = source(tmp_path, "{sim: {}}")
    ids = [c.config_id for c in src.expansion.configs]
    e = build_exports(report_of(src, [10.0, 10.0]), {"s": src}, backend="sim")["s"]["chat"]
    assert (e["config_id"], e["tied_with"]) == (ids[0], ids[1:])
    line = summary_lines({"run": {}, "exports": {"s": {"chat": e}}, "results": [], "ranking": []})[-1]
    assert line.startswith("export the winner of s/chat (") and ", tied with 1 more)" in line


def test_a_docker_run_takes_the_image_of_the_command_line_and_records_the_digest(tmp_path: Path) -> None:
    src = source(tmp_path, "{docker: {image: 'suite/img:1', env: {A: '1'}}}")
    options = SimpleNamespace(image="cli/img:2", hf_cache="/data/hf", namespace=None)
    exports = build_exports(report_of(src, [20.0, 10.0], "docker"), {"s": src}, backend="docker", options=options)
    e = exports["s"]["chat"]
    words = shlex.split(e["docker_run"])
    assert "cli/img:2" in words and e["image"] == "cli/img:2" and e["image_digest"] == "img@sha256:abc"
    assert "/data/hf:/root/.cache/huggingface" in words and "A=1" in words and ["--gpus", "2"] == \
        words[words.index("--gpus"):words.index("--gpus") + 2]
    assert e["inference_service_yaml"] is None   # the suite has no ome settings


@pytest.mark.parametrize(("ome", "note"), [
    ("{model: qwen3-8b}", "no InferenceService: "),   # no runtime named
    ("{runtime: rt, model: m, deployment_mode: Knative}", "no InferenceService: "),
])
def test_ome_settings_that_cannot_deploy_give_a_note_not_a_manifest(tmp_path: Path, ome: str, note: str) -> None:
    src = source(tmp_path, f"{{ome: {ome}}}")
    e = build_exports(report_of(src, [20.0, 10.0]), {"s": src}, backend="sim")["s"]["chat"]
    assert e["inference_service_yaml"] is None and e["inference_service_file"] is None
    assert any(n.startswith(note) and "backends.ome" in n for n in e["notes"]), e["notes"]
    assert e["launch_command"].startswith("python -m sglang.launch_server")


def test_an_ome_manifest_is_written_atomically_to_the_run_directory(tmp_path: Path) -> None:
    src = source(tmp_path, "{ome: {runtime: rt, model: m}}")
    exports = build_exports(report_of(src, [20.0, 10.0]), {"s": src}, backend="ome",
                            options=SimpleNamespace(namespace="from-cli"))
    e = exports["s"]["chat"]
    assert e["inference_service_file"] == "winner-s-chat.yaml" and "namespace: from-cli" in e["inference_service_yaml"]
    out = tmp_path / "run"
    assert write_exports({"exports": exports}, out) == {"s/chat": out / "winner-s-chat.yaml"}
    assert (out / "winner-s-chat.yaml").read_text() == e["inference_service_yaml"]
    assert [p.name for p in out.iterdir()] == ["winner-s-chat.yaml"]


def test_a_suite_that_cannot_be_read_again_gets_an_error_entry(tmp_path: Path) -> None:
    src = source(tmp_path, "{sim: {}}")
    e = build_exports(report_of(src, [20.0, 10.0]), {}, backend="sim")["s"]["chat"]
    assert e == {"config_id": src.expansion.configs[0].config_id,
                 "error": "suite 's' could not be re-read: nothing to export from"}
    assert export_lines({"exports": {"s": {"chat": e}}}) == []
