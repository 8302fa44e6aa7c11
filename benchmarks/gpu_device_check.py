"""One short check of the GPU code on a machine with real NVIDIA GPUs (issue 14, items 1 and 2). Prints JSON.

    python benchmarks/gpu_device_check.py [--seconds 20]      # from the repository root; < 3 minutes

What it checks, each as ``checks.<name>`` with ``ok`` and what it saw:

* ``inventory``: NVML and ``nvidia-smi`` list the same GPUs (UUIDs, names, driver), and ``run.machine``'s GPU
  block (``gpu_machine_info``: names, UUIDs, driver and CUDA versions);
* ``smi_format``: the real ``nvidia-smi --query-gpu`` output (raw text kept) parses with ``parse_smi_csv`` for
  the inventory and telemetry fields, including the clocks-event reasons field (new or old name), and the
  unit/header format our fake ``nvidia-smi`` (tests/gpu/fakes) imitates;
* ``mask``: ``CUDA_VISIBLE_DEVICES`` set to a GPU's UUID, its index, a UUID prefix, and
  ``NVIDIA_VISIBLE_DEVICES`` to its UUID, each resolves to that UUID; an index past the last GPU is the expected
  error; the machine's own mask (if any) as found; with torch, CUDA honours ``CUDA_VISIBLE_DEVICES=<uuid>``;
* ``telemetry``: the NVML sampler process and the nvidia-smi sampler, side by side for ``--seconds`` while the
  first GPU multiplies matrices (torch, in another process) or idles (no torch): sample counts at 2 Hz, mean/max,
  throttle reasons, warnings; and what one NVML sampling round costs.

Needs only ``nvidia-ml-py`` (installed when missing: from ``benchmarks/wheels/`` if that folder holds the wheel,
else from the package index) and ``nvidia-smi``. Writes ``$OUT/gpu_device_check.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)

LOAD = """
import sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + float(sys.argv[1])
n = 0
while time.time() < end:
    for _ in range(8):
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
    n += 8
print(n)
"""
CUDA_SEES = """
import torch
print(torch.cuda.device_count())
p = torch.cuda.get_device_properties(0)
print(getattr(p, "uuid", ""), p.name)
"""


def ensure_pynvml() -> dict[str, Any]:
    try:
        import pynvml  # noqa: F401

        return {"installed": "already"}
    except ImportError:
        pass
    wheels = REPO / "benchmarks" / "wheels"
    tries = ([["--no-index", "--find-links", str(wheels)]] if wheels.is_dir() else []) + [[]]
    said = []
    for extra in tries:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra, "nvidia-ml-py"],
                           capture_output=True, text=True, timeout=120, check=False)
        said.append((r.stdout + r.stderr).strip()[-400:])
        if r.returncode == 0:
            importlib.invalidate_caches()
            return {"installed": "now" + (" from benchmarks/wheels" if extra else " from the index")}
    return {"installed": False, "pip": said}


def run_check(name: str, fn: Callable[[], dict[str, Any]], out: dict[str, Any]) -> None:
    t = time.monotonic()
    try:
        result = fn()
    except Exception:
        result = {"ok": False, "error": traceback.format_exc(limit=6)}
    result["seconds"] = round(time.monotonic() - t, 2)
    out[name] = result
    print(f"[{name}] ok={result.get('ok')} ({result['seconds']}s)", file=sys.stderr, flush=True)


def check_inventory() -> dict[str, Any]:
    from pytest_sglang_tune.backends.gpus import gpu_machine_info, nvml_inventory, read_inventory, smi_inventory

    nvml, smi = nvml_inventory(), smi_inventory()
    info = gpu_machine_info(read_inventory())
    same = (nvml is not None and smi is not None and [d.uuid for d in nvml.devices] == [d.uuid for d in smi.devices]
            and [d.name for d in nvml.devices] == [d.name for d in smi.devices]
            and nvml.driver_version == smi.driver_version)
    return {"ok": bool(same and info["gpus"] and info["driver_version"] and info["cuda_version"]),
            "nvml": None if nvml is None else {"devices": [d.to_dict() for d in nvml.devices],
                                                "driver": nvml.driver_version, "cuda": nvml.cuda_version},
            "nvidia_smi": None if smi is None else {"devices": [d.to_dict() for d in smi.devices],
                                                     "driver": smi.driver_version, "cuda": smi.cuda_version},
            "nvml_and_smi_agree": same, "machine_gpus": info}


def _smi(*args: str) -> subprocess.CompletedProcess[str]:
    smi = shutil.which("nvidia-smi") or "nvidia-smi"
    return subprocess.run([smi, *args], capture_output=True, text=True, timeout=30, check=False)


def check_smi_format() -> dict[str, Any]:
    from pytest_sglang_tune.backends.gpus import SMI_INVENTORY_FIELDS, parse_smi_csv
    from pytest_sglang_tune.telemetry.sampler import SMI_FIELDS, SMI_REASONS, smi_sample

    out: dict[str, Any] = {}
    inv = _smi(f"--query-gpu={','.join(SMI_INVENTORY_FIELDS)}", "--format=csv,noheader,nounits")
    out["inventory_raw"] = inv.stdout[:2000]
    rows = parse_smi_csv(inv.stdout, SMI_INVENTORY_FIELDS)
    out["inventory_parsed"] = rows
    reasons_ok = None
    for reasons in SMI_REASONS:
        fields = (*SMI_FIELDS, reasons)
        r = _smi(f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits")
        out.setdefault("telemetry_raw", {})[reasons] = {"rc": r.returncode, "text": (r.stdout + r.stderr)[:2000]}
        if r.returncode == 0 and reasons_ok is None:
            reasons_ok = reasons
            out["telemetry_parsed"] = [smi_sample(x, reasons) for x in parse_smi_csv(r.stdout, fields)]
    units = _smi("--query-gpu=index,utilization.gpu,power.draw,memory.total,clocks.sm",
                 "--format=csv")  # what tests/gpu/fakes/nvidia_smi.py prints in this form
    out["with_units_raw"] = units.stdout[:1000]
    header = _smi()
    out["summary_header"] = [ln for ln in header.stdout.splitlines() if "CUDA Version" in ln][:1]
    loop = subprocess.Popen([shutil.which("nvidia-smi") or "nvidia-smi", "--query-gpu=timestamp,uuid,utilization.gpu",
                             "--format=csv,noheader,nounits", "--loop-ms=500"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.6)
    loop.terminate()
    loop_out = loop.communicate(timeout=10)[0]
    out["loop_ms_raw"] = loop_out[:1000]
    out["reasons_field"] = reasons_ok
    out["ok"] = bool(rows and all(r["uuid"] for r in rows) and reasons_ok and out.get("telemetry_parsed")
                     and out["summary_header"] and len(loop_out.splitlines()) >= 2 * len(rows))
    return out


def check_mask() -> dict[str, Any]:
    from pytest_sglang_tune.backends.gpus import device_pool, read_inventory, read_mask

    inv = read_inventory()
    if not inv.devices:
        return {"ok": False, "error": f"no GPU: {inv.detail}"}
    first = inv.devices[0]
    cases = {"uuid": {"CUDA_VISIBLE_DEVICES": first.uuid},
             "index": {"CUDA_VISIBLE_DEVICES": str(first.index)},
             "uuid_prefix": {"CUDA_VISIBLE_DEVICES": first.uuid[:12]},
             "nvidia_visible_devices_uuid": {"NVIDIA_VISIBLE_DEVICES": first.uuid}}
    out: dict[str, Any] = {"machine_env": {k: os.environ.get(k) for k in
                                           ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")},
                           "machine_mask": read_mask().describe()}
    try:
        own = device_pool(inventory=inv)
        out["machine_pool"] = {"uuids": [d.uuid for d in own.devices], "describe": own.describe()}
    except Exception as exc:
        out["machine_pool"] = {"error": str(exc)}
    ok = True
    for name, env in cases.items():
        pool = device_pool(env, inventory=inv)
        got = [d.uuid for d in pool.devices]
        out[name] = {"env": env, "uuids": got, "child_env": pool.child_env([0]), "ok": got == [first.uuid]}
        ok &= got == [first.uuid]
    try:
        device_pool({"CUDA_VISIBLE_DEVICES": str(len(inv.devices))}, inventory=inv)
        out["index_past_the_end"] = {"ok": False, "error": "no error raised"}
        ok = False
    except Exception as exc:
        out["index_past_the_end"] = {"ok": "names no GPU" in str(exc), "error": str(exc)}
    if importlib.util.find_spec("torch") is not None:
        env = {**os.environ, **device_pool({"CUDA_VISIBLE_DEVICES": first.uuid}, inventory=inv).child_env([0])}
        r = subprocess.run([sys.executable, "-c", CUDA_SEES], env=env, capture_output=True, text=True, timeout=120)
        lines = r.stdout.split("\n")
        out["cuda_with_uuid_mask"] = {"rc": r.returncode, "stdout": r.stdout.strip(), "stderr": r.stderr[-500:],
                                      "ok": r.returncode == 0 and lines[0].strip() == "1"
                                      and first.uuid.removeprefix("GPU-") in lines[1]}
    else:
        out["cuda_with_uuid_mask"] = "torch not installed: not checked"
    out["ok"] = bool(ok)
    return out


def check_telemetry(seconds: float) -> dict[str, Any]:
    from pytest_sglang_tune.backends.gpus import read_inventory
    from pytest_sglang_tune.telemetry.probe import read_round
    from pytest_sglang_tune.telemetry.sampler import GpuSampler

    inv = read_inventory()
    if not inv.devices:
        return {"ok": False, "error": f"no GPU: {inv.detail}"}
    uuid = inv.devices[0].uuid
    out: dict[str, Any] = {"gpu": uuid}
    import pynvml

    pynvml.nvmlInit()
    try:
        h = [(uuid, pynvml.nvmlDeviceGetHandleByUUID(uuid))]
        t = time.perf_counter()
        for _ in range(20):
            read_round(pynvml, h)
        out["nvml_round_ms"] = round((time.perf_counter() - t) / 20 * 1000, 3)
        out["one_round"] = read_round(pynvml, h)
    finally:
        pynvml.nvmlShutdown()
    nvml = GpuSampler([uuid], source="nvml")
    smi = GpuSampler([uuid], source="nvidia-smi")
    nvml.start()
    smi.start()
    load = None
    if importlib.util.find_spec("torch") is not None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        load = subprocess.Popen([sys.executable, "-c", LOAD, str(seconds)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lo, err = load.communicate(timeout=seconds + 120)
        out["load"] = {"rc": load.returncode, "matmuls": lo.strip(), "stderr": err[-500:]}
    else:
        out["load"] = "torch not installed: the GPU idles"
        time.sleep(seconds)
    a, b = nvml.stop(), smi.stop()
    for s in (a, b):
        s["series"] = {k: {m: v[:8] for m, v in ser.items()} for k, ser in s["series"].items()}  # keep it short
    out["nvml"], out["nvidia_smi"] = a, b
    expected = int(seconds * 2 * 0.8)
    ok = (a["source"] == "nvml" and b["source"] == "nvidia-smi" and a["samples"] >= expected
          and b["samples"] >= expected)
    if load is not None and ok:
        ok = bool(a["gpus"][0]["util_pct"] and a["gpus"][0]["util_pct"]["max"] >= 50)
    out["ok"] = ok
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="telemetry sampling time under load (default 20)")
    args = ap.parse_args()
    t0 = time.monotonic()
    report: dict[str, Any] = {"python": sys.version.split()[0], "nvidia_smi": shutil.which("nvidia-smi"),
                              "torch": importlib.util.find_spec("torch") is not None, "pynvml": ensure_pynvml()}
    checks: dict[str, Any] = {}
    run_check("inventory", check_inventory, checks)
    run_check("smi_format", check_smi_format, checks)
    run_check("mask", check_mask, checks)
    run_check("telemetry", lambda: check_telemetry(args.seconds), checks)
    report["checks"] = checks
    report["ok"] = all(c.get("ok") for c in checks.values())
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "gpu_device_check.json").write_text(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
