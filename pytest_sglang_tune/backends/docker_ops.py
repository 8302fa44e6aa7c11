"""Pieces of the docker backend that need no container of their own: labels and owners, the sweep of containers
left by dead runs, pulling with progress, and how a container died (exit code, OOM flag, classified log lines).

Every container we create carries ``LABEL`` (so ``docker ps -a --filter label=org.sglang-tune`` lists ours) and
an owner ``host:pid:start-time`` of the pytest process that made it: a container whose owner process is gone
(same host) is garbage; one whose owner lives belongs to a concurrent run and is never touched.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

LABEL = "org.sglang-tune"
L_OWNER = LABEL + ".owner"
L_HOST = LABEL + ".host"
L_PID = LABEL + ".pid"
L_RUN = LABEL + ".run"
L_SUITE = LABEL + ".suite"
L_CONFIG = LABEL + ".config"
L_GPUS = LABEL + ".gpus"
IMAGE_NEEDS_GPUS_LABEL = LABEL + ".needs-gpus"

_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("CUDA out of memory", re.compile(r"CUDA out of memory|OutOfMemoryError|out of memory|not enough memory for "
                                      r"the KV cache|Not enough memory", re.I)),
    ("invalid argument", re.compile(r"unrecognized arguments|invalid choice|invalid \w+ value|error: argument|"
                                    r"invalid argument|ValueError", re.I)),
    ("model not found or gated", re.compile(r"gated repo|Repository Not Found|401 Client Error|403 Client Error|"
                                            r"is not a local folder|model .* is unknown|No such file or directory"
                                            r".*config\.json|not a valid model identifier", re.I)),
)


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first); [] when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22); "" when unknown.

    Together with the pid it names a process uniquely, so a recycled pid is not mistaken for a live owner."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def owner_of_this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid)}"


def owner_alive(owner: str) -> bool:
    """True when ``host:pid:start`` is a live process here, or lives on another host (we cannot tell: keep it)."""
    host, _, rest = owner.partition(":")
    pid_s, _, start = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_s)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # a SIGKILLed xdist worker stays a zombie until xdist reaps it
        return False
    return not start or not fields or len(fields) <= 19 or fields[19] == start


def classify(log_tail: str) -> str:
    """What the last log lines say went wrong: CUDA out of memory, invalid argument, model not found/gated, other."""
    for cause, pattern in _CAUSES:
        if pattern.search(log_tail):
            return cause
    return "other"


def last_error_line(log_tail: str) -> str:
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"error|exception|killed|out of memory", ln, re.I):
            return ln[:300]
    return lines[-1][:300] if lines else ""


def describe_exit(state: dict[str, Any], log_tail: str) -> str:
    """``State`` of ``docker inspect`` + the last log lines → one sentence for the test report."""
    code = state.get("ExitCode")
    status = state.get("Status", "exited")
    parts = [f"the container {'is dead' if status == 'dead' else 'exited'} with code {code}"]
    if state.get("OOMKilled"):
        parts.append("OOMKilled (the container hit its memory limit)")
    if state.get("Error"):
        parts.append(f"daemon: {state['Error']}")
    cause = "out of host memory (OOMKilled)" if state.get("OOMKilled") else classify(log_tail)
    parts.append(f"cause: {cause}")
    line = last_error_line(log_tail)
    if line:
        parts.append(f"last error line: {line}")
    return "; ".join(parts)


def split_image(image: str) -> tuple[str, str]:
    """``repo[:tag]`` or ``repo@digest`` → (repo, tag or digest); the tag defaults to ``latest``."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = image.rpartition(":")
        return repo, tag
    return image, "latest"


def repo_digest(attrs: dict[str, Any], image: str) -> str | None:
    """The ``RepoDigests`` entry of ``image``'s repository (``repo@sha256:...``), else the first one."""
    digests = [str(d) for d in attrs.get("RepoDigests") or []]
    repo = split_image(image)[0]
    for d in digests:
        if d.split("@", 1)[0] == repo:
            return d
    return digests[0] if digests else None


def pull_with_progress(api: Any, image: str, emit: Callable[[str], None], *, every_s: float = 2.0) -> float:
    """``docker pull`` through the low-level API, reporting progress via ``emit``; returns seconds taken.

    Raises ``RuntimeError`` with the daemon's own words when the pull fails (the stream's ``error`` field)."""
    repo, tag = split_image(image)
    start = time.monotonic()
    layers: dict[str, tuple[int, int]] = {}
    done: set[str] = set()
    last = 0.0
    emit(f"pulling {image} ...")
    for event in api.pull(repo, tag=tag, stream=True, decode=True):
        if "error" in event:
            raise RuntimeError(str(event.get("error") or event.get("errorDetail")))
        layer, status = str(event.get("id", "")), str(event.get("status", ""))
        detail = event.get("progressDetail") or {}
        if detail.get("total"):
            layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        if status in ("Pull complete", "Already exists"):
            done.add(layer)
        now = time.monotonic()
        if now - last >= every_s and layers:
            last = now
            cur = sum(c if lid not in done else t for lid, (c, t) in layers.items())
            tot = sum(t for _, t in layers.values())
            emit(f"pulling {image}: {cur / tot:.0%}, {cur / 1e6:.0f}/{tot / 1e6:.0f} MB, {len(done)} layer(s) done")
    took = time.monotonic() - start
    emit(f"pulled {image} in {took:.1f}s ({len(done)} layer(s))")
    return took


def terminal_emitter(prefix: str = "sglang-tune docker") -> Callable[[str], None]:
    """Write progress to the real stderr (pytest captures ``sys.stderr`` during tests; xdist workers' stderr
    reaches the terminal too)."""
    stream = sys.__stderr__

    def emit(msg: str) -> None:
        if stream is not None:
            stream.write(f"\n{prefix}: {msg}\n")
            stream.flush()
    return emit


def sweep_dead_owners(client: Any, *, only_owner: str | None = None) -> list[str]:
    """Remove our containers (any state) whose owner on this host is dead; return their names.

    ``only_owner`` restricts it to one owner (the reaper, once that process has died). The low-level listing is
    used on purpose: the high-level one inspects each container and fails when one is removed meanwhile."""
    filters = {"label": [f"{L_OWNER}={only_owner}"] if only_owner else [LABEL]}
    removed = []
    for c in client.api.containers(all=True, filters=filters):
        labels = c.get("Labels") or {}
        owner = str(labels.get(L_OWNER, ""))
        if only_owner is None and (not owner or owner_alive(owner)):
            continue
        name = str((c.get("Names") or [c["Id"][:12]])[0]).lstrip("/")
        try:
            client.api.remove_container(c["Id"], force=True, v=True)
            removed.append(f"{name} ({c.get('State', '?')})")
        except Exception:  # removed concurrently, or being removed: nothing left to do
            pass
    return removed


def busy_device_ids(client: Any) -> set[str]:
    """Devices (UUIDs, or indices) held by our live containers (any run, on this daemon)."""
    busy: set[str] = set()
    for c in client.api.containers(filters={"label": [L_GPUS]}):  # running only
        value = str((c.get("Labels") or {}).get(L_GPUS, ""))
        busy |= {x.strip() for x in value.split(",") if x.strip()}
    return busy


def parse_ulimits(value: Any) -> list[tuple[str, int, int]]:
    """``{"memlock": -1, "stack": {"soft": 67108864, "hard": 67108864}}`` → [(name, soft, hard)]."""
    if value in (None, {}, []):
        return []
    if not isinstance(value, dict):
        raise ValueError(f"ulimits must be a mapping name -> limit or {{soft, hard}}, got {value!r}")
    out = []
    for name, lim in value.items():
        if isinstance(lim, dict):
            soft = int(str(lim.get("soft", lim.get("hard", -1))))
            hard = int(str(lim.get("hard", lim.get("soft", -1))))
        else:
            soft = hard = int(lim)
        out.append((str(name), soft, hard))
    return out


def quote_env_names(env: Iterable[str]) -> list[str]:
    return [f"-e {name}" for name in sorted(env)]


SERVER_PORT = 30000
HF_CACHE = "/root/.cache/huggingface"
PASS_THROUGH_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def docker_run_command(*, image: str, model_path: str, served_model_name: str, argv: Iterable[Any], gpus: int,
                       settings: dict[str, Any] | None = None, port: int = SERVER_PORT, name: str | None = None
                       ) -> str:
    """A ``docker run`` line that serves this config on any host with ``gpus`` NVIDIA GPUs, ready to paste.

    Same image, launch command and container settings as the docker backend (``ipc_host``/``shm_size``,
    ``ulimits``, ``env``, the Hugging Face cache mounted), with what belongs to one run left out (labels, leased
    device ids, a loopback-only port). Secrets never appear: ``HF_TOKEN`` and secret-named env entries are passed
    through from the shell (``-e NAME``), and a secret flag's value becomes ``"$NAME"`` for the shell to expand.
    """
    import shlex

    from pytest_sglang_tune.redact import is_secret_name, shell_words

    s = settings or {}
    flags = ["-d", "--init"]
    if name:
        flags += ["--name", name]
    if gpus > 0:
        flags += ["--gpus", str(gpus)]
    if s.get("shm_size"):
        flags.append(f"--shm-size={s['shm_size']}")
    if s.get("ipc_host", not s.get("shm_size")):
        flags.append("--ipc=host")
    flags += [f"--ulimit={n}={soft}:{hard}" for n, soft, hard in parse_ulimits(s.get("ulimits"))]
    flags += ["-v", f"{s.get('hf_cache') or '~/.cache/huggingface'}:{HF_CACHE}", "-p", f"{port}:{port}"]
    env = {str(k): str(v) for k, v in (s.get("env") or {}).items()}
    passed = sorted({*PASS_THROUGH_ENV, *(k for k in env if is_secret_name(k))})
    flags += [f"-e {k}" for k in passed]
    flags += ["-e " + shlex.quote(f"{k}={v}") for k, v in sorted(env.items()) if k not in passed]
    args = [str(a) for a in argv]
    if "--served-model-name" not in args:
        args += ["--served-model-name", served_model_name]
    cmd = ["python3", "-m", "sglang.launch_server", "--model-path", shlex.quote(model_path), "--host", "0.0.0.0",
           "--port", str(port)]
    return " ".join(["docker", "run", *flags, shlex.quote(image), *cmd, *shell_words(args)])
