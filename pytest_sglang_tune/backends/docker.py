"""The ``docker`` backend: each configuration runs as an SGLang container on a Docker Engine.

Per config: ``python3 -m sglang.launch_server --model-path … --host 0.0.0.0 --port <p> <flags>`` in the suite's
image (``backends.docker.image``, or ``--sglang-image``; the tag is configuration, never derived), with the leased
GPUs (devices of the job's mask, by UUID: ``gpus.device_pool``) as a ``DeviceRequest``, ``--ipc=host`` (or
``shm_size``), the Hugging Face cache mounted, ``HF_TOKEN`` passed from the environment (never written anywhere
else), configurable ulimits, ``init=True``, the port published on 127.0.0.1 (or host networking), and labels naming
run, suite, config, owner and leased GPUs. A missing image is pulled with progress; its ``RepoDigests`` entry goes
into each result.

Teardown is guaranteed four ways: ``stop`` after the config's last test (and at exit, by the engine); a container
that fails to start is removed at once; a reaper process removes what a killed pytest process left; and each
session first sweeps containers whose owner (same host) is dead, never those of a live concurrent run.

``--sglang-fake-gpus=N`` is for tests only: the inventory reports N devices and the leased ids reach the container
as ``SGLANG_TUNE_FAKE_GPUS`` (and ``CUDA_VISIBLE_DEVICES``) instead of a ``DeviceRequest``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends import docker_ops as ops
from pytest_sglang_tune.backends.base import Backend, BackendContext, Capacity, DeploymentSpec, Endpoint
from pytest_sglang_tune.backends.gpus import DevicePool
from pytest_sglang_tune.errors import DeployError
from pytest_sglang_tune.redact import redact_text

CONTAINER_PORT = 30000
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
FAKE_GPUS_ENV = "SGLANG_TUNE_FAKE_GPUS"
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
NETWORKS = ("bridge", "host")
INSTALL_HINT = "the docker backend needs the Docker SDK for Python: pip install 'pytest-sglang-tune[docker]'"


def _docker() -> Any:
    try:
        import docker
    except ImportError:
        raise DeployError(INSTALL_HINT) from None
    return docker


class DockerDeployment:
    """A container started by ``DockerBackend``."""

    def __init__(self, container: Any, endpoint: Endpoint, launch_command: list[str], info: dict[str, Any],
                 secrets: list[str], log_path: Path) -> None:
        self.container = container
        self.endpoint = endpoint
        self.launch_command = launch_command
        self.info = info
        self.log_path = log_path
        self._secrets = secrets
        self._lock = threading.Lock()  # the watchdog polls from a worker thread
        self.removed = False

    def poll(self) -> str | None:
        docker = _docker()
        with self._lock:
            try:
                self.container.reload()
            except docker.errors.NotFound:
                return "the container was removed while in use (by someone else: docker rm?)"
            except docker.errors.DockerException as exc:
                return f"the Docker Engine stopped answering about the container: {exc}"
            state = dict(self.container.attrs.get("State") or {})
        if state.get("Status") in ("exited", "dead"):
            return ops.describe_exit(state, self.logs(40))
        return None

    def logs(self, tail: int = 50) -> str:
        docker = _docker()
        try:
            raw = self.container.logs(tail=tail, stdout=True, stderr=True)
        except docker.errors.DockerException:
            return ""
        return redact_text(raw.decode("utf-8", "replace"), extra_secrets=self._secrets)


def _needs_gpus_label(attrs: Mapping[str, Any]) -> bool | None:
    """An image's ``org.sglang-tune.needs-gpus`` label (from ``docker image inspect``) as a bool; None if absent."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return {"true": True, "false": False}.get(str(labels.get(ops.IMAGE_NEEDS_GPUS_LABEL, "")).strip().lower())


class DockerBackend(Backend):
    """Runs each configuration as a container; see the module docstring."""

    name = "docker"
    needs_gpus_default = True  # a real SGLang image does; an image can say otherwise with a label (below)

    def __init__(self, *, gpus: int | None, log_dir: Path, run_id: str, image: str | None = None,
                 fake_gpus: int | None = None, network: str | None = None, hf_cache: str | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        if network is not None and network not in NETWORKS:
            raise DeployError(f"--sglang-docker-network={network!r} is not valid; choose one of: "
                              f"{', '.join(NETWORKS)}")
        self.gpus = gpus
        self.log_dir = log_dir
        self.run_id = run_id
        self.image = image
        self.fake_gpus = fake_gpus
        self.network = network
        self.hf_cache = hf_cache
        self.progress = progress or ops.terminal_emitter()
        self.session_notes: list[str] = []
        self._client: Any = None
        self._pulled: dict[str, dict[str, Any]] = {}
        self._needs_gpus_label: dict[str, bool | None] = {}
        self._reaper: subprocess.Popen[bytes] | None = None
        self._owner = ops.owner_of_this_process()
        self._lock = threading.Lock()
        self._pool: DevicePool | None = None

    # --- the engine ---------------------------------------------------------------------------------------------
    def client(self) -> Any:
        """The Docker client, connected on first use; the first use also sweeps containers of dead owners."""
        with self._lock:
            if self._client is not None:
                return self._client
            docker = _docker()
            try:
                client = docker.from_env(timeout=120)
                client.ping()
            except docker.errors.DockerException as exc:
                where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
                raise DeployError(f"cannot reach the Docker Engine at {where}: {exc}. Start dockerd (in this "
                                  "repository's CI: .ci/setup-docker.sh) or set DOCKER_HOST.") from None
            removed = ops.sweep_dead_owners(client)
            if removed:
                self.session_notes.append(f"removed {len(removed)} container(s) left by dead runs: "
                                          + ", ".join(removed))
            self._client = client
            return client

    def capacity(self) -> Capacity:
        if self.fake_gpus is not None:
            return Capacity(self.fake_gpus, f"--sglang-fake-gpus={self.fake_gpus} (TEST ONLY: virtual devices, "
                                            f"passed to containers as {FAKE_GPUS_ENV})")
        pool = self.pool()
        if self.gpus is not None and not pool.devices:
            self.session_notes.append(f"--gpus={self.gpus} but {pool.describe()}; trusting --gpus and handing "
                                      f"devices on by index (0..{self.gpus - 1})")
        return pool.capacity(self.gpus)

    def pool(self) -> DevicePool:
        """The GPUs this job may use: its mask resolved to UUIDs on this host; for a remote daemon
        (``DOCKER_HOST=tcp://…``) the mask's entries as written; none for ``--sglang-fake-gpus``."""
        if self._pool is None:
            from pytest_sglang_tune.backends.gpus import GpuDevice, Inventory, device_pool, read_mask

            host = os.environ.get("DOCKER_HOST", "")
            if self.fake_gpus is not None:
                self._pool = DevicePool(())
            elif host and not host.startswith(("unix://", "npipe://")):
                mask = read_mask()
                self._pool = DevicePool(tuple(GpuDevice(None, e) for e in mask.entries or ()), mask,
                                        Inventory((), "none", f"the daemon at DOCKER_HOST={host} is not this host"))
            else:
                self._pool = device_pool()
        return self._pool

    def leased_ids(self, spec: DeploymentSpec) -> list[Any]:
        """The leased devices as handed on (UUIDs), or the lease's positions when the pool is empty."""
        pool = self.pool()
        return pool.ids(spec.gpu_ids) if pool.devices else list(spec.gpu_ids)

    def telemetry_sampler(self, deployment: Any) -> Any:
        """The GPUs this backend handed on (their UUIDs in ``info["gpus_used"]``), sampled on this host."""
        from pytest_sglang_tune.telemetry import gpu_sampler

        return gpu_sampler(deployment.info.get("gpus_used") or ())

    def notes(self) -> list[str]:
        return list(self.session_notes)

    def busy_devices(self) -> set[int]:
        """Pool positions held by live containers of ours (also of a killed worker whose container is not gone
        yet), from their ``org.sglang-tune.gpus`` label."""
        return self.pool().slots(ops.busy_device_ids(self.client()))

    # --- start ------------------------------------------------------------------------------------------------
    def image_needs_gpus(self, settings: Mapping[str, Any]) -> bool | None:
        """The ``org.sglang-tune.needs-gpus`` label (``"true"``/``"false"``) of the suite's image when the image
        is already here; None when it is not, has no such label, or no engine answers within two seconds (a
        capacity decision must not wait for a pull or a remote daemon)."""
        image = str(self.image or settings.get("image") or "")
        if not image:
            return None
        if image not in self._needs_gpus_label:
            attrs = self._pulled.get(image)
            if attrs is None:
                docker = _docker()
                try:
                    client = docker.from_env(timeout=2)
                    try:
                        attrs = client.images.get(image).attrs
                    finally:
                        client.close()
                except (docker.errors.DockerException, OSError):  # not here, or no engine: ask again later
                    return None
            self._needs_gpus_label[image] = _needs_gpus_label(attrs)
        return self._needs_gpus_label[image]

    def _image_of(self, spec: DeploymentSpec) -> str:
        image = self.image or spec.settings.get("image")
        if not image:
            raise DeployError(f"suite {spec.suite!r}: no image for the docker backend; set backends.docker.image "
                              "in the suite (e.g. lmsysorg/sglang:v0.5.5.post3-cu129-amd64) or --sglang-image",
                              config_id=spec.config_id)
        return str(image)

    def ensure_image(self, image: str, config_id: str | None = None) -> dict[str, Any]:
        """Inspect ``image``, pulling it (with progress on the terminal) when it is not here."""
        if image in self._pulled:
            return self._pulled[image]
        attrs: dict[str, Any]
        docker = _docker()
        client = self.client()
        try:
            attrs = client.images.get(image).attrs
        except docker.errors.ImageNotFound:
            try:
                took = ops.pull_with_progress(client.api, image, self.progress)
                attrs = client.images.get(image).attrs
            except (RuntimeError, docker.errors.DockerException) as exc:
                said = getattr(exc, "explanation", None) or str(exc)
                raise DeployError(f"cannot pull image {image!r}: the Docker Engine said: {said}",
                                  config_id=config_id) from None
            self.session_notes.append(f"pulled {image} in {took:.1f}s ({ops.repo_digest(attrs, image)})")
        self._pulled[image] = attrs
        return attrs

    def _reaper_running(self) -> None:
        if self._reaper is not None and self._reaper.poll() is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"docker-reaper-{os.getpid()}.log").open("ab")
        self._reaper = subprocess.Popen([sys.executable, "-m", "pytest_sglang_tune.backends.docker_reaper",
                                         self._owner], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, close_fds=True)
        log.close()

    def _env(self, spec: DeploymentSpec, needs_gpus: bool) -> tuple[dict[str, str], list[str]]:
        env = {str(k): str(v) for k, v in (spec.settings.get("env") or {}).items()}
        secrets = [os.environ[name] for name in SECRET_ENV if os.environ.get(name)]
        for name in SECRET_ENV:
            if os.environ.get(name):
                env[name] = os.environ[name]
        if self.fake_gpus is not None:
            ids = ",".join(str(i) for i in spec.gpu_ids)
            env[FAKE_GPUS_ENV] = ids
            env["CUDA_VISIBLE_DEVICES"] = ids
            env.setdefault("SGLANG_SIM_NUM_GPUS", str(max(1, len(spec.gpu_ids))))
        api_key = spec.server_args.get("--api-key")
        if api_key:
            secrets.append(str(api_key))
        return env, secrets

    def start(self, spec: DeploymentSpec) -> DockerDeployment:
        docker = _docker()
        image = self._image_of(spec)
        client = self.client()
        attrs = self.ensure_image(image, spec.config_id)
        self._reaper_running()
        s = spec.settings
        needs_gpus = s.get("needs_gpus")
        if needs_gpus is None:
            label = _needs_gpus_label(attrs)
            needs_gpus = self.needs_gpus_default if label is None else label
        network = self.network or str(s.get("network") or "bridge")
        if network not in NETWORKS:
            raise DeployError(f"backends.docker.network={network!r} is not valid; choose one of: "
                              f"{', '.join(NETWORKS)}", config_id=spec.config_id)
        if network == "host":
            from pytest_sglang_tune.backends.local import free_port

            port = free_port()
        else:
            port = CONTAINER_PORT
        cmd = ["python3", "-m", "sglang.launch_server", "--model-path", spec.model_path, "--host", "0.0.0.0",
               "--port", str(port), *spec.argv]
        if "--served-model-name" not in spec.argv:
            cmd += ["--served-model-name", spec.served_model_name]
        env, secrets = self._env(spec, needs_gpus)
        gpu_ids = self.pool().ids(spec.gpu_ids)
        kwargs: dict[str, Any] = {
            "command": cmd, "detach": True, "init": True, "environment": env, "stdin_open": False,
            "labels": {ops.LABEL: "1", ops.L_OWNER: self._owner, ops.L_HOST: self._owner.split(":")[0],
                       ops.L_PID: str(os.getpid()), ops.L_RUN: spec.run_id or self.run_id, ops.L_SUITE: spec.suite,
                       ops.L_CONFIG: spec.config_id[:4000]},
            "name": self._name(spec),
        }
        run_flags = ["--init", "--rm"]
        if gpu_ids:
            kwargs["labels"][ops.L_GPUS] = ",".join(gpu_ids)
        if needs_gpus and self.fake_gpus is None and gpu_ids:
            kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]
            run_flags.append(f"--gpus='\"device={','.join(gpu_ids)}\"'")
        if s.get("shm_size"):
            kwargs["shm_size"] = str(s["shm_size"])
            run_flags.append(f"--shm-size={s['shm_size']}")
        if s.get("ipc_host", not s.get("shm_size")):
            kwargs["ipc_mode"] = "host"
            run_flags.append("--ipc=host")
        try:
            ulimits = ops.parse_ulimits(s.get("ulimits"))
        except (TypeError, ValueError) as exc:
            raise DeployError(f"backends.docker.ulimits: {exc}", config_id=spec.config_id) from None
        if ulimits:
            kwargs["ulimits"] = [docker.types.Ulimit(name=n, soft=so, hard=h) for n, so, h in ulimits]
            run_flags += [f"--ulimit={n}={so}:{h}" for n, so, h in ulimits]
        cache = self.hf_cache or s.get("hf_cache")
        cache_path = Path(str(cache)).expanduser() if cache else Path.home() / ".cache" / "huggingface"
        if cache or cache_path.is_dir():
            cache_path.mkdir(parents=True, exist_ok=True)
            kwargs["volumes"] = {str(cache_path): {"bind": HF_CACHE_IN_CONTAINER, "mode": "rw"}}
            run_flags.append(f"-v={cache_path}:{HF_CACHE_IN_CONTAINER}")
        if network == "host":
            kwargs["network_mode"] = "host"
            run_flags.append("--network=host")
        else:
            kwargs["ports"] = {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)}
            run_flags.append(f"-p=127.0.0.1::{CONTAINER_PORT}")
        run_flags += [f"-e={k}" if k in SECRET_ENV else f"-e={k}={v}" for k, v in sorted(env.items())]
        container = self._create_and_start(client, image, kwargs, spec)
        host_port = port if network == "host" else self._published_port(container, spec)
        api_key = spec.server_args.get("--api-key")
        endpoint = Endpoint(f"http://127.0.0.1:{host_port}", spec.served_model_name,
                            api_key=str(api_key) if api_key else None)
        launch = ["docker", "run", *run_flags, image, *cmd]
        info = {"image": image, "image_digest": ops.repo_digest(attrs, image), "image_id": attrs.get("Id"),
                "gpus_used": self.leased_ids(spec), "container": container.name,
                "gpu_passing": ("DeviceRequest" if "device_requests" in kwargs else
                                f"env {FAKE_GPUS_ENV}" if self.fake_gpus is not None else "none")}
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.config_id)[:80]
        log_path = self.log_dir / f"{spec.suite}-{safe}-{container.short_id}.log"
        return DockerDeployment(container, endpoint, launch, info, secrets, log_path)

    def _name(self, spec: DeploymentSpec) -> str:
        import hashlib

        h = hashlib.sha1(f"{spec.suite}/{spec.config_id}".encode()).hexdigest()[:8]
        return f"sglang-tune-{spec.run_id or self.run_id}-{h}-{os.getpid()}-{os.urandom(2).hex()}"

    def _create_and_start(self, client: Any, image: str, kwargs: dict[str, Any], spec: DeploymentSpec) -> Any:
        """``containers.run`` in two steps: a failed start (e.g. a GPU request without the NVIDIA runtime) leaves a
        ``created`` container behind, which is removed here before the error is raised."""
        docker = _docker()
        run_kwargs = dict(kwargs)
        run_kwargs.pop("detach", None)
        container = None
        try:
            container = client.containers.create(image, **run_kwargs)
            container.start()
            return container
        except docker.errors.APIError as exc:
            said = exc.explanation or str(exc)
            if container is not None:
                _remove(container)
            hint = ""
            if "could not select device driver" in str(said):
                hint = (" — this daemon has no GPU support (install the NVIDIA Container Toolkit and restart "
                        "dockerd), or run images that need no GPU with backends.docker.needs_gpus: false")
            raise DeployError(f"cannot start a container of {image!r}: the Docker Engine said: {said}{hint}",
                              config_id=spec.config_id) from None
        except BaseException:
            if container is not None:
                _remove(container)
            raise

    def _published_port(self, container: Any, spec: DeploymentSpec) -> int:
        container.reload()
        ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
        bound = ports.get(f"{CONTAINER_PORT}/tcp") or []
        for b in bound:
            if b.get("HostPort"):
                return int(b["HostPort"])
        logs = redact_text(container.logs(tail=20).decode("utf-8", "replace"))
        _remove(container)
        raise DeployError(f"the container {container.name} has no published port for {CONTAINER_PORT}/tcp "
                          f"(state {container.status})", config_id=spec.config_id, log_tail=logs)

    # --- stop -------------------------------------------------------------------------------------------------
    def stop(self, deployment: Any, timeout: float = 10.0) -> None:
        d: DockerDeployment = deployment
        if d.removed:
            return
        docker = _docker()
        try:
            d.container.stop(timeout=int(timeout))
        except docker.errors.DockerException:
            pass
        try:  # keep the server's log beside the report, secrets redacted
            d.log_path.parent.mkdir(parents=True, exist_ok=True)
            d.log_path.write_text(d.logs(tail=100_000))
        except OSError:
            pass
        _remove(d.container)
        d.removed = True


def _remove(container: Any) -> None:
    try:
        container.remove(force=True, v=True)
    except Exception:  # already gone (removed by a reaper or by hand)
        pass


def make_backend(context: BackendContext) -> DockerBackend:
    """The registry's factory: --sglang-image, --sglang-fake-gpus, --sglang-docker-network, --sglang-hf-cache."""
    o = context.options
    return DockerBackend(gpus=context.gpus, log_dir=context.log_dir, run_id=context.run_id, image=o.image,
                         fake_gpus=o.fake_gpus, network=o.docker_network, hf_cache=o.hf_cache,
                         progress=context.progress)
