"""Export the winner where it runs: a sim run of a tiny suite gives, for its best config, the launch command, the
``docker run`` line and the OME InferenceService (valid against OME's CRD), in report.json, report.html, a
YAML file and the terminal summary — with no secret in any of them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pytest_sglang_tune.flags import load_flag_table
from pytest_sglang_tune.report.store import load_report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
REPORT_SCHEMA = json.loads((ROOT / "docs" / "report-schema.json").read_text())
ISVC_CRD = ROOT.parent / "shared" / "reference" / "ome-crds" / "InferenceService.yaml"
API_KEY = "sk-live-export-7f3a9c"
HF_TOKEN = "hf_export_suite_2b8d1e"
SHELL_TOKEN = "hf_export_shell_5c0f4a"
IMAGE = "lmsysorg/sglang:v0.5.5.post3-cu129-amd64"


def suite(tag: str) -> str:
    env = f"{{HF_TOKEN: {HF_TOKEN}, NCCL_DEBUG: INFO}}"
    return f"""\
model: {{path: Qwen/Qwen3-8B, served_name: {tag}}}
backends:
  sim: {{gpu: h100_sxm}}
  docker: {{image: "{IMAGE}", shm_size: 16g, env: {env}}}
  ome: {{runtime: srt-qwen3-8b, model: qwen3-8b, namespace: tune, env: {env}}}
server:
  fixed: {{enable-metrics: true, api-key: {API_KEY}}}
  grid: {{schedule-policy: [lpm, fcfs]}}
workloads:
  - name: chat
    scenario: D(64,16)
    num_requests: 4
    warmup_requests: 1
    concurrency: [1, 2]
slos: ["ttft_ms.p99 <= 60000"]
objective: {{maximize: output_throughput_per_gpu}}
"""


class Blocks(HTMLParser):
    """The text of every ``<pre>`` inside ``div.export`` elements, by the export's id and the pre's class."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: dict[tuple[str, str], str] = {}
        self.export: str | None = None
        self.depth = 0
        self.pre: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div":
            if self.export is not None:
                self.depth += 1
            elif a.get("class") == "export":
                self.export, self.depth = str(a.get("id")), 0
        elif tag == "pre" and self.export is not None:
            self.pre = str(a.get("class"))
            self.blocks[(self.export, self.pre)] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self.pre = None
        elif tag == "div" and self.export is not None:
            if self.depth == 0:
                self.export = None
            else:
                self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.export is not None and self.pre is not None:
            self.blocks[(self.export, self.pre)] += data


def server_flags(words: list[str]) -> dict[str, Any]:
    """The SGLang flags of a launch line's words, parsed by SGLang 0.5.23's own argparse (``ServerArgs`` names)."""
    start = words.index("sglang.launch_server") + 1
    return vars(load_flag_table("0.5.23").build_parser().parse_args(words[start:]))


TAG = f"exp-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """One sim run of the tiny suite (2 configs × 2 loads, 4 requests each) in a pytest subprocess, shared by the
    tests below (``pytester`` is per test); ``HF_TOKEN`` is set in its environment too."""
    root = tmp_path_factory.mktemp("export")
    (root / "tune_exp.yaml").write_text(suite(TAG))
    env = {**os.environ, "HF_TOKEN": SHELL_TOKEN}
    proc = subprocess.run([sys.executable, "-m", "pytest", "tune_exp.yaml", "--backend=sim", "-p", "no:cacheprovider"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_path,) = (root / "reports").glob("*/report.json")
    return load_report(report_path), report_path.parent, proc.stdout


def test_the_report_exports_the_best_config_of_each_workload(run: tuple[dict[str, Any], Path, str]) -> None:
    report, _, _ = run
    jsonschema.validate(report, REPORT_SCHEMA)
    export = report["exports"]["exp"]["chat"]
    # the answer of report.html: the best at the highest load level where one meets the SLOs (c2 here)
    c2 = [e for e in report["ranking"] if e["load"]["concurrency"] == 2]
    assert export["config_id"] == c2[0]["config_id"] and export["load"]["concurrency"] == 2
    assert export["tied_with"] == [e["config_id"] for e in c2[1:] if e["rank"] == 1]
    assert export["backend"] == "sim" and export["gpus"] == 1 and export["image"] == IMAGE
    result = next(r for r in report["results"] if r["config_id"] == export["config_id"]
                  and r["load"]["concurrency"] == 2)
    words = shlex.split(export["launch_command"])
    assert words[:3] == ["python", "-m", "sglang.launch_server"]
    flags = server_flags(words)
    assert flags["model_path"] == "Qwen/Qwen3-8B" and flags["served_model_name"] == TAG
    assert flags["schedule_policy"] == result["server_args"]["schedule-policy"]
    assert flags["enable_metrics"] is True and flags["api_key"] == "$API_KEY"


def test_the_docker_run_line_round_trips_to_the_same_args(run: tuple[dict[str, Any], Path, str]) -> None:
    report, _, _ = run
    export = report["exports"]["exp"]["chat"]
    words = shlex.split(export["docker_run"])
    assert words[:2] == ["docker", "run"] and words[words.index(IMAGE) + 1] == "python3"
    assert ["--gpus", "1"] == words[words.index("--gpus"):words.index("--gpus") + 2] and "--shm-size=16g" in words
    assert "HF_TOKEN" in words and "NCCL_DEBUG=INFO" in words   # -e HF_TOKEN: passed on from the shell
    in_docker, launched = server_flags(words), server_flags(shlex.split(export["launch_command"]))
    assert in_docker == launched   # the same server, whichever way it is started
    result = next(r for r in report["results"] if r["config_id"] == export["config_id"])
    assert {k: in_docker[k.replace("-", "_")] for k in result["server_args"] if k != "api-key"} == \
        {k: v for k, v in result["server_args"].items() if k != "api-key"}


def test_the_inference_service_is_valid_against_omes_crd(run: tuple[dict[str, Any], Path, str]) -> None:
    if not ISVC_CRD.is_file():
        pytest.skip(f"OME's InferenceService CRD not found at {ISVC_CRD} (../shared/reference/ome-crds)")
    from pytest_sglang_tune.backends.ome_schema import schema_errors

    report, run_dir, _ = run
    export = report["exports"]["exp"]["chat"]
    text = (run_dir / export["inference_service_file"]).read_text()
    assert text == export["inference_service_yaml"]
    assert not list(run_dir.glob(".winner-*"))   # written atomically: no temporary file left behind
    body = yaml.safe_load(text)
    assert schema_errors(body, yaml.safe_load(ISVC_CRD.read_text())) == []
    runner = body["spec"]["engine"]["runner"]
    assert body["metadata"]["namespace"] == "tune"
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--api-key" in runner["args"] and runner["args"][runner["args"].index("--api-key") + 1] == "$(API_KEY)"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "sglang-tune-secrets", "key": "HF_TOKEN"}}} \
        in runner["env"]


def test_the_html_has_a_copyable_block_per_workload(run: tuple[dict[str, Any], Path, str]) -> None:
    report, run_dir, _ = run
    export = report["exports"]["exp"]["chat"]
    page = (run_dir / "report.html").read_text()
    parser = Blocks()
    parser.feed(page)
    assert parser.blocks[("export-exp-chat", "inference-service")] == export["inference_service_yaml"]
    assert parser.blocks[("export-exp-chat", "docker-run")] == export["docker_run"]
    assert "<script src" not in page and "<link" not in page   # self-contained


def test_the_terminal_points_to_the_manifest(run: tuple[dict[str, Any], Path, str]) -> None:
    report, run_dir, stdout = run
    export = report["exports"]["exp"]["chat"]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("export the winner"))
    assert line.startswith(f"export the winner of exp/chat ({export['label']}")
    assert line.endswith(f"reports/{run_dir.name}/{export['inference_service_file']}")


def test_no_secret_in_anything_the_run_wrote(run: tuple[dict[str, Any], Path, str]) -> None:
    _, run_dir, stdout = run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name.startswith("winner-") for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        for secret in (API_KEY, HF_TOKEN, SHELL_TOKEN):
            assert secret not in text, f"{secret} in {path.name}"
    assert all(s not in stdout for s in (API_KEY, HF_TOKEN, SHELL_TOKEN))
