"""genai-bench and guidellm against the ground-truth server, for ``loadgen_accuracy.py --rivals``.

Neither tool reports per-request send times we could match to the server's log, so they are scored by
distributions: their reported p50/p99 TTFT and per-request ITL (the mean gap between a request's tokens)
minus the same percentiles of the truth of the same run (the server's log of every request it served while
the tool ran). Their client CPU is the CPU time of the tool's whole process tree (``psutil``, polled every
0.1 s; children that exit are counted with their last reading) over the streaming window — from the last poll
before the server streamed a token to the first poll after it streamed the last one — so start-up, dataset
generation and report writing are not charged; it is divided by the tokens the server streamed meanwhile.

Where the tools come from: ``$GENAI_BENCH`` / ``$GUIDELLM`` (paths to the executables), else
``/tmp/venv-x/bin/<tool>``, else ``PATH``. Both need a Hugging Face tokenizer: a local directory is built from
``pytest_sglang_tune/sim/data/tokenizer.json`` (``PreTrainedTokenizerFast``), with ``HF_HUB_OFFLINE=1``.

Configuration (see ``command``):

* genai-bench: ``benchmark --api-backend openai --task text-to-text --traffic-scenario D(<in>,<out>)
  --num-concurrency <streams> --max-requests-per-run <n> --additional-request-params {"ignore_eos": true}``,
  one process (``--num-workers 0``), ``/v1/chat/completions`` streaming. Its load model is closed-loop
  concurrency only (locust users), so the Poisson scenarios cannot run.
* guidellm: ``run --backend kind=openai_http --profile kind=concurrent,streams=<streams>`` (closed loop) or
  ``kind=poisson,rate=<r>`` (open loop), ``--data kind=synthetic_text,prompt_tokens=<in>,output_tokens=<out>``,
  ``--constraint kind=max_requests,count=<n>``, JSON output; ``/v1/chat/completions`` streaming with
  continuous usage. It runs its own worker processes (all pinned to the client core with the rest of its tree).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RIVALS = ("genai-bench", "guidellm")
_ENV = {"genai-bench": "GENAI_BENCH", "guidellm": "GUIDELLM"}


def find(tool: str) -> str | None:
    """The executable of ``tool`` or None."""
    env = os.environ.get(_ENV[tool])
    if env and Path(env).is_file():
        return env
    venv = Path("/tmp/venv-x/bin") / tool
    if venv.is_file():
        return str(venv)
    return shutil.which(tool)


def unavailable(tool: str) -> str | None:
    """Why ``tool`` cannot run here (None when it can)."""
    exe = find(tool)
    if exe is None:
        return f"{tool} not installed (set ${_ENV[tool]}, or install it in /tmp/venv-x or on PATH)"
    try:
        import psutil  # noqa: F401
    except ImportError:
        return "psutil is not installed (needed to measure the tool's process-tree CPU)"
    return None


def cannot_run(tool: str, rate: float | None) -> str | None:
    """Why ``tool``'s load model cannot play a scenario (None when it can)."""
    if tool == "genai-bench" and rate is not None:
        return "genai-bench has closed-loop concurrency only (locust users), no open-loop arrival rate"
    return None


def build_tokenizer(dest: Path) -> Path:
    """A local HF-format tokenizer directory from the sim's ``tokenizer.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "pytest_sglang_tune" / "sim" / "data" / "tokenizer.json", dest / "tokenizer.json")
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "model_max_length": 32768,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    }))
    (dest / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "vocab_size": 8192, "bos_token_id": 0, "eos_token_id": 0}))
    return dest


def command(tool: str, url: str, sc: Any, work: Path, tok: Path) -> list[str]:
    exe = find(tool)
    assert exe is not None
    if tool == "genai-bench":
        return [exe, "benchmark", "--api-backend", "openai", "--api-base", url, "--api-key", "x",
                "--task", "text-to-text", "--api-model-name", "gt", "--model-tokenizer", str(tok),
                "--num-concurrency", str(sc.concurrency), "--traffic-scenario", f"D({sc.input},{sc.output})",
                "--max-time-per-run", "10", "--max-requests-per-run", str(sc.n),
                "--additional-request-params", '{"ignore_eos": true}', "--metrics-time-unit", "ms",
                "--experiment-base-dir", str(work), "--experiment-folder-name", "run", "--log-dir", str(work)]
    profile = (f"kind=concurrent,streams={sc.concurrency}" if sc.rate is None
               else f"kind=poisson,rate={sc.rate}")
    return [exe, "run", "--backend", f"kind=openai_http,target={url},model=gt", "--profile", profile,
            "--data", f"kind=synthetic_text,prompt_tokens={sc.input},output_tokens={sc.output}",
            "--tokenizer", f"kind=huggingface_auto,model={tok}", "--constraint", f"kind=max_requests,count={sc.n}",
            "--output", f"kind=json,path={work / 'out.json'}", "--disable-console-interactive"]


def _tree_cpu(proc: Any, seen: dict[int, float]) -> float:
    """CPU seconds of ``proc`` and its descendants; ``seen`` keeps the last reading of processes now gone."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = []
    for p in procs:
        try:
            c = p.cpu_times()
            seen[p.pid] = c.user + c.system
        except psutil.Error:
            pass
    return sum(seen.values())


def _server_tokens(url: str) -> int:
    with urllib.request.urlopen(url + "/gt/stats", timeout=10) as r:
        return int(json.loads(r.read())["tokens"])


def run(tool: str, url: str, sc: Any, work: Path, tok: Path, pin: list[str],
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``tool`` on scenario ``sc`` against ``url``; its reported distributions (seconds) and CPU."""
    import psutil

    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [*pin, *command(tool, url, sc, work, tok)]
    base = _server_tokens(url)
    seen: dict[int, float] = {}
    with open(work / "stdout.log", "wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
        proc = psutil.Process(popen.pid)
        start_cpu: float | None = None
        end_cpu: float | None = None
        last_tokens = base
        final_tokens = base
        deadline = time.monotonic() + 1200
        while popen.poll() is None and time.monotonic() < deadline:
            cpu = _tree_cpu(proc, seen)
            tokens = _server_tokens(url)
            if tokens == base:
                start_cpu = cpu
            elif tokens != last_tokens:
                end_cpu, final_tokens = None, tokens
            elif end_cpu is None:
                end_cpu = cpu  # first poll after the stream stopped growing
            last_tokens = tokens
            time.sleep(0.1)
        if popen.poll() is None:
            popen.kill()
            popen.wait()
            raise RuntimeError(f"{tool} did not finish in 20 min")
    if popen.returncode != 0:
        tail = (work / "stdout.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{tool} exited {popen.returncode}: {tail}")
    final_tokens = max(final_tokens, _server_tokens(url))
    if end_cpu is None:
        end_cpu = sum(seen.values())
    cpu_s = end_cpu - (start_cpu or 0.0)
    rep = _genai_bench(work) if tool == "genai-bench" else _guidellm(work)
    rep.update(cpu_s=cpu_s, server_tokens=final_tokens - base, cmd=" ".join(cmd))
    return rep


def _genai_bench(work: Path) -> dict[str, Any]:
    files = sorted((work / "run").glob("D*_num_concurrency_*.json"))
    if not files:
        raise RuntimeError(f"genai-bench wrote no result JSON under {work / 'run'}")
    d = json.loads(files[-1].read_text())
    st = d["aggregated_metrics"]["stats"]
    ms = 1e-3  # --metrics-time-unit ms
    return {"ttft_p50": st["ttft"]["p50"] * ms, "ttft_p99": st["ttft"]["p99"] * ms,
            "itl_p50": st["tpot"]["p50"] * ms, "itl_p99": st["tpot"]["p99"] * ms, "itl_kind": "tpot",
            "completed": d["aggregated_metrics"]["num_completed_requests"],
            "errors": d["aggregated_metrics"]["num_error_requests"],
            "tokens": int(st["num_output_tokens"]["sum"])}


def _guidellm(work: Path) -> dict[str, Any]:
    d = json.loads((work / "out.json").read_text())
    m = d["benchmarks"][0]["metrics"]

    def q(name: str, p: str) -> float:
        return float(m[name]["successful"]["percentiles"][p]) * 1e-3

    return {"ttft_p50": q("time_to_first_token_ms", "p50"), "ttft_p99": q("time_to_first_token_ms", "p99"),
            "itl_p50": q("inter_token_latency_ms", "p50"), "itl_p99": q("inter_token_latency_ms", "p99"),
            "itl_kind": "itl", "completed": m["time_to_first_token_ms"]["successful"]["count"],
            "errors": m["time_to_first_token_ms"]["errored"]["count"]
            + m["time_to_first_token_ms"]["incomplete"]["count"],
            "tokens": int(m["output_token_count"]["successful"]["total_sum"]),
            "concurrency_p50": m["request_concurrency"]["successful"]["median"]}
