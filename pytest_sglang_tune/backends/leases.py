"""GPU leases: concrete device ids shared by every xdist worker of one run, so no GPU is used twice.

State is a small JSON file guarded by a ``filelock.FileLock``; entries of dead processes are dropped, so a killed
worker's lease does not leak (its server may still hold devices: backends that can see that pass ``busy``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from pytest_sglang_tune.errors import CapacityError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Lease:
    device_ids: tuple[int, ...]
    path: Path

    def release(self) -> None:
        GpuLeases(self.path.parent, total=0)._release(self.device_ids)


class GpuLeases:
    """Hands out ``n`` device ids out of ``total``; waits (polling) while they are taken."""

    def __init__(self, directory: Path, total: int) -> None:
        self.dir = Path(directory)
        self.total = total
        self.path = self.dir / "gpu-leases.json"
        self.lock = FileLock(str(self.dir / "gpu-leases.lock"))

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict) and _alive(int(v.get("pid", 0)))}

    def _save(self, data: dict[str, dict[str, object]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def acquire(self, n: int, owner: str, *, timeout: float = 3600.0, poll: float = 0.5,
                busy: Callable[[], Iterable[int]] | None = None) -> Lease:
        """Lease ``n`` devices. ``busy`` lists devices held by something we cannot see (e.g. a live container)."""
        if n > self.total:
            raise CapacityError(f"needs {n} GPU(s) but only {self.total} are available")
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                data = self._load()
                taken = {int(k) for k in data}
                if busy is not None:
                    taken |= set(busy())
                free = [i for i in range(self.total) if i not in taken]
                if len(free) >= n:
                    ids = tuple(free[:n])
                    for i in ids:
                        data[str(i)] = {"pid": os.getpid(), "owner": owner, "since": time.time()}
                    self._save(data)
                    return Lease(ids, self.path)
            if time.monotonic() > deadline:
                raise CapacityError(f"waited {timeout:.0f}s for {n} free GPU(s) of {self.total}")
            time.sleep(poll)

    def _release(self, ids: Iterable[int]) -> None:
        with self.lock:
            data = self._load()
            for i in ids:
                data.pop(str(i), None)
            self._save(data)
