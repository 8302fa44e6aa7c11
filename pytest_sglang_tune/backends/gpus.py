"""The GPUs of this host and the ones this job may use.

*Inventory*: NVML (``nvidia-ml-py``, module ``pynvml``) when it loads, else ``nvidia-smi --query-gpu``, else
none. Indices are NVML's, which are PCI bus order (as ``nvidia-smi`` numbers GPUs, and as CUDA does with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``).

*Mask*: self-hosted runners pin a job to some GPUs with ``CUDA_VISIBLE_DEVICES`` (read first: CUDA honours it) or
``NVIDIA_VISIBLE_DEVICES`` (the NVIDIA container runtime's; ``all`` means no mask, ``none``/``void`` no GPU).
Entries are indices or UUIDs (``GPU-…``, a unique prefix is enough, as for CUDA; ``MIG-…`` passes through). As
CUDA does, a negative index ends the list (``-1`` hides every GPU); an index or UUID that names no GPU is an
error, where CUDA would silently drop it and everything after it.

*Pool*: the mask's devices in the mask's order, each resolved to its UUID. Leases (``leases.GpuLeases``) hand out
positions in the pool; backends hand the UUIDs on (docker: ``DeviceRequest.device_ids``, which are the host's
and stay right inside a containerised runner, where indices would not; local: ``CUDA_VISIBLE_DEVICES=<uuids>``
with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_sglang_tune.backends.base import Capacity

MASK_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
SMI_INVENTORY_FIELDS = ("index", "uuid", "name", "memory.total", "pci.bus_id", "driver_version")
SMI_MISSING = ("[N/A]", "[Not Supported]", "N/A", "[Unknown Error]", "")
_CUDA_VERSION_RE = re.compile(r"CUDA Version\s*:\s*([0-9]+(?:\.[0-9]+)*)")


def usage_error(message: str) -> Exception:
    """``pytest.UsageError`` (pytest prints it as ``ERROR: …`` and exits with code 4); a ValueError where pytest
    is not installed (``benchmarks/gpu_device_check.py`` on a bare GPU machine)."""
    try:
        import pytest
    except ImportError:
        return ValueError(message)
    return pytest.UsageError(message)


class SmiError(RuntimeError):
    """``nvidia-smi`` is missing, failed, or did not understand the query (its own words)."""


@dataclass(frozen=True)
class GpuDevice:
    """One GPU: NVML index (None when not resolved), UUID (or the mask entry as written when not resolved)."""

    index: int | None
    uuid: str
    name: str = ""
    memory_total_mib: int | None = None
    pci_bus_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "name": self.name,
                "memory_total_mib": self.memory_total_mib, "pci_bus_id": self.pci_bus_id}


@dataclass(frozen=True)
class Inventory:
    """Every GPU of this host (as NVML or nvidia-smi sees it), and how it was found."""

    devices: tuple[GpuDevice, ...]
    source: str                      # "nvml" | "nvidia-smi" | "none"
    detail: str                      # for capacity messages: "NVML reports 8 GPU(s) on this host"
    driver_version: str | None = None
    cuda_version: str | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_version_text(version: int) -> str:
    """NVML's ``nvmlSystemGetCudaDriverVersion`` (``12040``) as ``"12.4"``."""
    return f"{version // 1000}.{version % 1000 // 10}"


def nvml_inventory() -> Inventory | None:
    """The inventory through NVML; None when ``pynvml`` is not installed or NVML does not load."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None
    try:
        devices = []
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = _optional(lambda h=h: int(pynvml.nvmlDeviceGetMemoryInfo(h).total) // 2**20)
            bus = _optional(lambda h=h: _text(pynvml.nvmlDeviceGetPciInfo(h).busId))
            devices.append(GpuDevice(i, _text(pynvml.nvmlDeviceGetUUID(h)), _text(pynvml.nvmlDeviceGetName(h)),
                                     mem, bus))
        driver = _optional(lambda: _text(pynvml.nvmlSystemGetDriverVersion()))
        cuda = _optional(lambda: cuda_version_text(int(pynvml.nvmlSystemGetCudaDriverVersion())))
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return Inventory(tuple(devices), "nvml", f"NVML reports {len(devices)} GPU(s) on this host", driver, cuda)


def _optional(get: Any) -> Any:
    try:
        return get()
    except Exception:  # NVML_ERROR_NOT_SUPPORTED and friends: the value is unknown, not the device
        return None


def parse_smi_csv(text: str, fields: Sequence[str]) -> list[dict[str, str | None]]:
    """``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`` output → one dict per line.

    ``[N/A]``/``[Not Supported]`` become None. A line with the wrong number of values is an error."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        values = [v.strip() for v in line.split(", ")]
        if len(values) != len(fields):
            raise SmiError(f"nvidia-smi printed {len(values)} value(s) where {len(fields)} were asked "
                           f"({', '.join(fields)}): {line!r}")
        rows.append({f: (None if v in SMI_MISSING else v) for f, v in zip(fields, values, strict=True)})
    return rows


def smi_command(fields: Sequence[str], ids: Sequence[str] = ()) -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise SmiError("nvidia-smi is not on PATH")
    cmd = [smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    return [*cmd, f"--id={','.join(ids)}"] if ids else cmd


def smi_query(fields: Sequence[str], ids: Sequence[str] = (), *, timeout: float = 15.0) -> list[dict[str, str | None]]:
    """One ``nvidia-smi --query-gpu`` round; raises SmiError with nvidia-smi's own words when it fails."""
    cmd = smi_command(fields, ids)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SmiError(f"nvidia-smi failed: {exc}") from None
    if out.returncode != 0:
        said = (out.stdout + out.stderr).strip().splitlines()
        raise SmiError(f"nvidia-smi exited with {out.returncode}: {said[0] if said else 'no output'}")
    return parse_smi_csv(out.stdout, fields)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def smi_inventory() -> Inventory | None:
    """The inventory through ``nvidia-smi``; None when it is missing or fails."""
    try:
        rows = smi_query(SMI_INVENTORY_FIELDS)
    except SmiError:
        return None
    devices = tuple(GpuDevice(_int(r["index"]), r["uuid"] or f"index {r['index']}", r["name"] or "",
                              _int(r["memory.total"]), r["pci.bus_id"]) for r in rows)
    driver = next((r["driver_version"] for r in rows if r["driver_version"]), None)
    return Inventory(devices, "nvidia-smi", f"nvidia-smi lists {len(devices)} GPU(s) on this host", driver,
                     smi_cuda_version())


def smi_cuda_version() -> str | None:
    """The CUDA version of the driver from ``nvidia-smi``'s summary header (``CUDA Version: 12.4``)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi], capture_output=True, text=True, timeout=15, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _CUDA_VERSION_RE.search(out)
    return m[1] if m else None


def read_inventory() -> Inventory:
    """NVML, else nvidia-smi, else an empty inventory with the reason. Never raises."""
    found = nvml_inventory() or smi_inventory()
    if found is not None:
        return found
    why = "no GPU on this host (no NVML" + (", nvidia-smi failed)" if shutil.which("nvidia-smi") else
                                            ", no nvidia-smi)")
    return Inventory((), "none", why)


def detect_gpus() -> tuple[int, str]:
    """(count, how it was found). Never raises; zero with the reason when there is none."""
    inv = read_inventory()
    return len(inv.devices), inv.detail


def gpu_machine_info(inventory: Inventory | None = None) -> dict[str, Any]:
    """For ``run.machine``: ``{gpus: [{index, uuid, name, memory_total_mib, pci_bus_id}], driver_version,
    cuda_version, gpu_source}`` (``gpus`` empty and ``gpu_source: "none"`` without GPUs)."""
    inv = inventory or read_inventory()
    return {"gpus": [d.to_dict() for d in inv.devices], "driver_version": inv.driver_version,
            "cuda_version": inv.cuda_version, "gpu_source": inv.source}


# --- the job's mask ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuMask:
    """The variable that restricts this job's GPUs, its value and entries (``entries`` None: no mask)."""

    var: str | None = None
    value: str | None = None
    entries: tuple[str, ...] | None = None

    def describe(self) -> str:
        return f"{self.var}={self.value}" if self.var else "no GPU mask"


def read_mask(env: Mapping[str, str] | None = None) -> GpuMask:
    """The job's GPU mask from ``CUDA_VISIBLE_DEVICES``, else ``NVIDIA_VISIBLE_DEVICES``."""
    env = os.environ if env is None else env
    for var in MASK_VARS:
        if var not in env:
            continue
        value = env[var]
        raw = [e.strip() for e in value.split(",")] if value.strip() else []
        if var == "NVIDIA_VISIBLE_DEVICES":
            if value.strip().lower() == "all":
                return GpuMask(var, value, None)
            if value.strip().lower() in ("none", "void", ""):
                return GpuMask(var, value, ())
        entries: list[str] = []
        for e in raw:
            if re.fullmatch(r"-\d+", e):  # CUDA: a negative index ends the list
                break
            entries.append(e)
        return GpuMask(var, value, tuple(entries))
    return GpuMask()


def _by_uuid(entry: str, inventory: Inventory, mask: GpuMask) -> GpuDevice:
    if entry.startswith("MIG-"):
        return GpuDevice(None, entry, "MIG device")
    exact = [d for d in inventory.devices if d.uuid == entry]
    found = exact or [d for d in inventory.devices if d.uuid.startswith(entry)]
    if len(found) == 1:
        return found[0]
    known = ", ".join(d.uuid for d in inventory.devices)
    if found:
        raise usage_error(f"{mask.describe()}: {entry!r} is a prefix of {len(found)} GPU UUIDs; "
                                f"give more of it ({inventory.detail}: {known})")
    raise usage_error(f"{mask.describe()}: no GPU has the UUID {entry!r} ({inventory.detail}: "
                            f"{known or 'none'})")


def resolve_mask(mask: GpuMask, inventory: Inventory) -> tuple[GpuDevice, ...]:
    """The mask's devices in its order, resolved against ``inventory``; every device when there is no mask.

    Without an inventory the entries pass through unresolved (``index`` None). Raises ``pytest.UsageError``
    naming the variable, the entry and the GPUs there are, when an entry names no GPU."""
    if mask.entries is None:
        return inventory.devices
    if inventory.source == "none":
        return tuple(GpuDevice(None, e) for e in mask.entries)
    entries = mask.entries
    if (mask.var == "NVIDIA_VISIBLE_DEVICES" and all(e.isdigit() for e in entries)
            and len(inventory.devices) == len(entries)):
        return inventory.devices  # inside the container it configured: its host indices name exactly these
    by_index = {d.index: d for d in inventory.devices}
    out: list[GpuDevice] = []
    for e in entries:
        if e.isdigit():
            if int(e) not in by_index:
                raise usage_error(
                    f"{mask.describe()}: index {e} names no GPU ({inventory.detail}, indices "
                    f"0..{len(inventory.devices) - 1}; indices are in PCI bus order, as nvidia-smi shows them)")
            out.append(by_index[int(e)])
        elif e.startswith(("GPU-", "MIG-")):
            out.append(_by_uuid(e, inventory, mask))
        else:
            raise usage_error(f"{mask.describe()}: {e!r} is neither a GPU index nor a UUID (GPU-… or MIG-…)")
    dupes = sorted({d.uuid for d in out if sum(x.uuid == d.uuid for x in out) > 1})
    if dupes:
        raise usage_error(f"{mask.describe()}: names the same GPU twice ({', '.join(dupes)})")
    return tuple(out)


@dataclass(frozen=True)
class DevicePool:
    """The devices this run may lease, in the mask's order; leases are positions in ``devices``."""

    devices: tuple[GpuDevice, ...]
    mask: GpuMask = field(default_factory=GpuMask)
    inventory: Inventory = field(default_factory=lambda: Inventory((), "none", "no inventory"))

    @property
    def resolved(self) -> bool:
        """Every device is known by its UUID (so ``CUDA_DEVICE_ORDER`` cannot change which GPU an id means)."""
        return bool(self.devices) and all(d.uuid.startswith(("GPU-", "MIG-")) for d in self.devices)

    def ids(self, slots: Iterable[int]) -> list[str]:
        """What to hand on for leased positions: UUIDs (or unresolved entries; a position past the pool, which
        only a launcher that needs no GPU gets, as its number)."""
        return [self.devices[s].uuid if s < len(self.devices) else str(s) for s in slots]

    def slots(self, ids: Iterable[str]) -> set[int]:
        """Positions of the pool that ``ids`` (UUIDs or entries, e.g. from a container's label) name; a number
        past the pool names that position (see ``ids``)."""
        wanted = set(ids)
        found = {i for i, d in enumerate(self.devices) if d.uuid in wanted}
        return found | {int(x) for x in wanted if x.isdigit() and int(x) >= len(self.devices)}

    def child_env(self, slots: Sequence[int]) -> dict[str, str]:
        """``CUDA_VISIBLE_DEVICES`` (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``) for a server given these positions."""
        if not slots:
            return {}
        env = {"CUDA_VISIBLE_DEVICES": ",".join(self.ids(slots))}
        if self.resolved:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

    def describe(self) -> str:
        n = len(self.devices)
        if self.mask.entries is None:
            return self.inventory.detail
        return f"{self.mask.describe()} allows {n} GPU(s) ({self.inventory.detail})"

    def capacity(self, gpus: int | None) -> Capacity:
        """``--gpus`` (or the pool's size) as a Capacity; ``--gpus`` larger than a mask or inventory is a
        ``pytest.UsageError`` naming both. Without a mask and an inventory, ``--gpus`` is trusted."""
        n = len(self.devices)
        if gpus is None:
            return Capacity(n, self.describe())
        if gpus > n and (self.mask.entries is not None or self.inventory.source != "none"):
            raise usage_error(f"--gpus={gpus} but {self.describe()}; lower --gpus to at most {n} "
                                    f"or widen the mask")
        return Capacity(gpus, f"--gpus={gpus}" + (f" of {self.describe()}" if n else ""))


def device_pool(env: Mapping[str, str] | None = None, inventory: Inventory | None = None) -> DevicePool:
    """The devices this job may use: the mask from ``env`` resolved against the inventory (read when not given)."""
    inv = read_inventory() if inventory is None else inventory
    mask = read_mask(env)
    return DevicePool(resolve_mask(mask, inv), mask, inv)


def check_gpus_option(backend: str, gpus: int | None, *, fake_gpus: bool = False) -> None:
    """Before any worker starts: a mask entry that names no GPU, or ``--gpus`` beyond the job's mask (or this
    host's GPUs), is a ``pytest.UsageError`` (for the backends that run on this host's GPUs: local, docker)."""
    host = os.environ.get("DOCKER_HOST", "")
    if backend not in ("local", "docker") or fake_gpus or (backend == "docker" and host
                                                           and not host.startswith(("unix://", "npipe://"))):
        return
    device_pool().capacity(gpus)
