"""The ``local`` backend: ``python -m sglang.launch_server`` as a child process on this machine.

The launcher is configurable (suite ``backends.local.launcher`` or ``--sglang-launcher``), so the same code runs
our simulated server (``sim``), a real SGLang in a virtualenv, or a wrapper script. The GPU lease picks devices
of the job's mask (``gpus.device_pool``); the server gets their UUIDs as ``CUDA_VISIBLE_DEVICES`` with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. The whole process group is stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pytest_sglang_tune.backends.base import Backend, BackendContext, Capacity, DeploymentSpec, Endpoint
from pytest_sglang_tune.backends.gpus import DevicePool
from pytest_sglang_tune.errors import DeployError
from pytest_sglang_tune.redact import redact_text

DEFAULT_LAUNCHER = "python -m sglang.launch_server"
OWNER_ENV = "SGLANG_TUNE_OWNER"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def parse_launcher(launcher: str | Sequence[str]) -> list[str]:
    """``"python -m sglang.launch_server"`` → argv; ``python`` means this interpreter."""
    argv = shlex.split(launcher) if isinstance(launcher, str) else list(launcher)
    if not argv:
        raise DeployError("the launcher command is empty")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def tail_file(path: Path, lines: int = 50) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


def _copy_redacted(stream: IO[bytes], path: Path, secrets: Sequence[str]) -> None:
    """Copy the server's output to its log file line by line, secrets redacted (SGLang logs its args)."""
    with path.open("w", encoding="utf-8") as log:
        for raw in iter(stream.readline, b""):
            log.write(redact_text(raw.decode("utf-8", "replace"), extra_secrets=secrets))
            log.flush()
    stream.close()


class LocalDeployment:
    """A server process started by ``LocalBackend``."""

    def __init__(self, proc: subprocess.Popen[bytes], endpoint: Endpoint, launch_command: list[str],
                 log_path: Path, info: dict[str, Any], secrets: Sequence[str]) -> None:
        self.proc = proc
        self.endpoint = endpoint
        self.launch_command = launch_command
        self.log_path = log_path
        self.info = info
        self._secrets = list(secrets)
        self.copier: threading.Thread | None = None

    def poll(self) -> str | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        if rc < 0:
            try:
                return f"the server process was killed by signal {signal.Signals(-rc).name}"
            except ValueError:
                return f"the server process was killed by signal {-rc}"
        return f"the server process exited with code {rc}"

    def logs(self, tail: int = 50) -> str:
        if self.copier is not None and self.proc.poll() is not None:
            self.copier.join(timeout=2)  # the process is gone: let its last lines reach the file
        return redact_text(tail_file(self.log_path, tail), extra_secrets=self._secrets)


class LocalBackend(Backend):
    """Runs each configuration as a local child process."""

    name = "local"
    needs_gpus_default = True

    def __init__(self, *, gpus: int | None, launcher: str | None = None, env: Mapping[str, str] | None = None,
                 log_dir: Path | None = None, host: str = "127.0.0.1") -> None:
        self.gpus = gpus
        self.launcher = launcher
        self.env = dict(env or {})
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="sglang-tune-logs-"))
        self.host = host
        self._pool: DevicePool | None = None

    def pool(self) -> DevicePool:
        """The GPUs this job may use (its mask, resolved to UUIDs), read once."""
        if self._pool is None:
            from pytest_sglang_tune.backends.gpus import device_pool

            self._pool = device_pool()
        return self._pool

    def telemetry_sampler(self, deployment: Any) -> Any:
        """The GPUs this backend handed on (their UUIDs in ``info["gpus_used"]``), sampled on this host."""
        from pytest_sglang_tune.telemetry import gpu_sampler

        return gpu_sampler(deployment.info.get("gpus_used") or ())

    def capacity(self) -> Capacity:
        return self.pool().capacity(self.gpus)

    def leased_ids(self, spec: DeploymentSpec) -> list[Any]:
        """The leased devices as handed on (UUIDs), or the lease's positions when the pool is empty."""
        pool = self.pool()
        return pool.ids(spec.gpu_ids) if pool.devices else list(spec.gpu_ids)

    def launcher_argv(self, spec: DeploymentSpec) -> list[str]:
        return parse_launcher(spec.settings.get("launcher") or self.launcher or DEFAULT_LAUNCHER)

    def extra_env(self, spec: DeploymentSpec) -> dict[str, str]:
        env = {str(k): str(v) for k, v in (spec.settings.get("env") or {}).items()}
        env.update(self.pool().child_env(spec.gpu_ids))
        return env

    def deployment_info(self, spec: DeploymentSpec) -> dict[str, Any]:
        return {"image": None, "image_digest": None}

    def start(self, spec: DeploymentSpec) -> LocalDeployment:
        port = int(spec.settings.get("port") or 0) or free_port(self.host)
        if port_in_use(port, self.host):
            raise DeployError(f"port {port} on {self.host} is already in use; free it or choose another "
                              "port (backends.<name>.port in the suite, or leave it unset for a free port)",
                              config_id=spec.config_id)
        base = self.launcher_argv(spec)
        cmd = [*base, "--model-path", spec.model_path, "--host", self.host, "--port", str(port), *spec.argv]
        if "--served-model-name" not in spec.argv:
            cmd += ["--served-model-name", spec.served_model_name]
        env = dict(os.environ)
        env.update(self.env)
        env.update(self.extra_env(spec))
        env[OWNER_ENV] = f"{socket.gethostname()}:{os.getpid()}:{spec.run_id}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.config_id)[:80]
        log_path = self.log_dir / f"{spec.suite}-{safe}-{port}.log"
        api_key = spec.server_args.get("--api-key")
        secrets = [str(api_key)] if api_key else []
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        except FileNotFoundError:
            raise DeployError(f"launcher not found: {cmd[0]!r} does not exist or is not on PATH "
                              f"(launcher command: {shlex.join(base)})", config_id=spec.config_id) from None
        except PermissionError:
            raise DeployError(f"launcher {cmd[0]!r} is not executable", config_id=spec.config_id) from None
        assert proc.stdout is not None
        copier = threading.Thread(target=_copy_redacted, args=(proc.stdout, log_path, secrets), daemon=True,
                                  name=f"sglang-tune-log-{port}")
        copier.start()
        endpoint = Endpoint(f"http://{self.host}:{port}", spec.served_model_name,
                            api_key=str(api_key) if api_key else None)
        info = self.deployment_info(spec)
        info.setdefault("gpus_used", self.leased_ids(spec))
        deployment = LocalDeployment(proc, endpoint, cmd, log_path, info, secrets)
        deployment.copier = copier
        return deployment

    def stop(self, deployment: Any, timeout: float = 10.0) -> None:
        proc: subprocess.Popen[bytes] = deployment.proc
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        # the group may outlive its leader (child processes of the launcher)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def make_backend(context: BackendContext) -> LocalBackend:
    """The registry's factory for ``--backend=local`` (launcher from ``--sglang-launcher``)."""
    return LocalBackend(gpus=context.gpus, launcher=context.options.launcher, log_dir=context.log_dir)
