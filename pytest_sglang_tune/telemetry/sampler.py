"""Sample leased GPUs during a point, from a process of its own (NVML probe, or ``nvidia-smi -lms``).

The load generator runs its event loop in the pytest process (or in ``--sglang-loadgen-procs`` processes). A
sampling thread there would take the GIL from it at every sample; so the sampler is another process
(``telemetry.probe``) that writes JSON lines (NVML) or has ``nvidia-smi --query-gpu ... --loop-ms=500`` write CSV
lines to a temporary file, and nothing is read until ``stop()``, after the point. ``start()`` waits for the first
sample, so the sampler's own start-up (an interpreter, NVML's init) happens before the load does. The probe exits
when this process is gone, so a killed pytest run leaves no sampler behind.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pytest_sglang_tune.telemetry.summary import empty_summary, summarize

MIN_INTERVAL_S = 0.5          # at most 2 Hz
READY_TIMEOUT_S = 15.0
SMI_REASONS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")  # new name (driver 535+), old name
SMI_FIELDS = ("timestamp", "uuid", "name", "utilization.gpu", "memory.used", "memory.total", "power.draw",
              "clocks.sm", "temperature.gpu")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def smi_sample(row: Mapping[str, str | None], reasons_field: str) -> dict[str, Any]:
    """One parsed ``nvidia-smi --query-gpu`` row (``parse_smi_csv``) → a sample (see ``summary``)."""
    stamp = row.get("timestamp")
    t = (datetime.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp() if stamp else time.time())
    reasons = row.get(reasons_field)
    return {"t": t, "uuid": row["uuid"], "name": row.get("name"), "util_pct": _float(row.get("utilization.gpu")),
            "mem_used_mib": _float(row.get("memory.used")), "mem_total_mib": _float(row.get("memory.total")),
            "power_w": _float(row.get("power.draw")), "sm_clock_mhz": _float(row.get("clocks.sm")),
            "temp_c": _float(row.get("temperature.gpu")), "reasons": int(reasons, 16) if reasons else None}


class GpuSampler:
    """``start()`` before a point, ``stop()`` after it → the point's telemetry summary (``summary.summarize``).

    ``source``: ``auto`` (NVML when ``pynvml`` is installed and loads, else ``nvidia-smi``), ``nvml`` or
    ``nvidia-smi``. Never raises: a sampler that cannot sample returns a summary whose ``warnings`` say why."""

    def __init__(self, uuids: Sequence[str], *, interval_s: float = MIN_INTERVAL_S, source: str = "auto",
                 python: str = sys.executable, names: Mapping[str, str] | None = None) -> None:
        if source not in ("auto", "nvml", "nvidia-smi"):
            raise ValueError(f"telemetry source {source!r} is not valid; use auto, nvml or nvidia-smi")
        self.uuids = list(uuids)
        self.interval_s = max(MIN_INTERVAL_S, float(interval_s))
        self.source = source
        self.python = python
        self.names = dict(names or {})
        self.used: str | None = None
        self.problems: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Path | None = None
        self._t0 = 0.0
        self._reasons_field = SMI_REASONS[0]

    # --- start ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start sampling; returns once the first sample is in (or sampling proved impossible)."""
        self._t0 = time.time()
        if not self.uuids:
            self.problems.append("no GPU to sample (the deployment leased none)")
            return
        order = ("nvml", "nvidia-smi") if self.source == "auto" else (self.source,)
        for src in order:
            if src == "nvml" and self._start_nvml():
                self.used = "nvml"
                return
            if src == "nvidia-smi" and self._start_smi():
                self.used = "nvidia-smi"
                return

    def _spawn(self, cmd: list[str]) -> IO[bytes]:
        fd, name = tempfile.mkstemp(prefix="sglang-tune-telemetry-", suffix=".out")
        self._out = Path(name)
        fh = os.fdopen(fd, "wb")
        self._proc = subprocess.Popen([self.python, "-m", "pytest_sglang_tune.telemetry.probe", "--parent",
                                       str(os.getpid()), *cmd], stdout=fh, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL, close_fds=True)
        return fh

    def _wait_first_line(self) -> str | None:
        assert self._out is not None and self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self._out.read_text(errors="replace")
            if "\n" in text:
                return text.split("\n", 1)[0]
            if self._proc.poll() is not None:
                text = self._out.read_text(errors="replace")
                return text.split("\n", 1)[0] if text else None
            time.sleep(0.02)
        return None

    def _start_nvml(self) -> bool:
        import importlib.util

        if importlib.util.find_spec("pynvml") is None:
            self.problems.append("NVML: pynvml is not installed (pip install 'pytest-sglang-tune[gpu]')")
            return False
        fh = self._spawn(["--uuids", ",".join(self.uuids), "--interval", str(self.interval_s)])
        fh.close()
        first = self._wait_first_line()
        head: dict[str, Any] = {"error": f"the probe printed {first!r}" if first else "the probe printed nothing"}
        try:
            parsed = json.loads(first) if first else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            head = parsed
        if head.get("ready"):
            self.names = {g["uuid"]: g.get("name") or "" for g in head.get("gpus", [])} | self.names
            return True
        self.problems.append(f"NVML: {head.get('error')}")
        self._kill()
        return False

    def _start_smi(self) -> bool:
        from pytest_sglang_tune.backends.gpus import SmiError, smi_command, smi_query

        for reasons in SMI_REASONS:  # a driver before 535 knows only the old name of the field
            fields = (*SMI_FIELDS, reasons)
            try:
                smi_query(fields, self.uuids)  # one round first: nvidia-smi's own words if it cannot
            except SmiError as exc:
                if "not a valid field" in str(exc):
                    continue
                self.problems.append(str(exc))
                return False
            self._reasons_field = reasons
            self._spawn(["--uuids", ",".join(self.uuids), "--exec", *smi_command(fields, self.uuids),
                         f"--loop-ms={int(self.interval_s * 1000)}"]).close()
            if self._wait_first_line() is not None:
                return True
            self.problems.append("nvidia-smi's sampling loop printed nothing")
            self._kill()
            return False
        self.problems.append("nvidia-smi knows neither clocks_event_reasons.active nor clocks_throttle_reasons.active")
        return False

    # --- stop ----------------------------------------------------------------------------------------------
    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # the probe stops its nvidia-smi child itself
        try:
            proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def samples(self) -> list[dict[str, Any]]:
        """What the sampling process wrote (complete lines only)."""
        if self._out is None or not self._out.exists():
            return []
        lines = self._out.read_text(errors="replace").splitlines()
        out: list[dict[str, Any]] = []
        if self.used == "nvml":
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # the last line, cut by SIGTERM
                out += [{"t": rec["t"], **row} for row in rec.get("rows", [])]
        elif self.used == "nvidia-smi":
            from pytest_sglang_tune.backends.gpus import SmiError, parse_smi_csv

            fields = (*SMI_FIELDS, self._reasons_field)
            for line in lines:
                try:
                    out += [smi_sample(r, self._reasons_field) for r in parse_smi_csv(line, fields)]
                except (SmiError, ValueError):
                    continue
        return out

    def stop(self) -> dict[str, Any]:
        """Stop sampling and summarise the samples taken since ``start()``."""
        t1 = time.time()
        self._kill()
        try:
            if self.used is None:
                why = "; ".join(self.problems) or "no sampler started"
                return empty_summary("none", self.interval_s, f"no GPU telemetry: {why}")
            rows = [r for r in self.samples() if self._t0 - self.interval_s <= float(r["t"]) <= t1 + 0.05]
            return summarize(rows, source=self.used, interval_s=self.interval_s, names=self.names, order=self.uuids)
        finally:
            if self._out is not None:
                self._out.unlink(missing_ok=True)
