"""A fake ``nvidia-smi`` for tests (run through a ``nvidia-smi`` wrapper on PATH); GPUs from ``FAKE_NVML_SPEC``.

Speaks what we use of the real tool (``nvidia-smi --help-query-gpu`` and its man page): ``--query-gpu=FIELDS``
with ``--format=csv[,noheader][,nounits]``: one line per GPU, values joined by ", ", a header naming each field
with its unit in brackets, units after the values unless ``nounits`` ("35 %", "81559 MiB", "71.23 W", "1980
MHz"), ``[N/A]`` for a value the GPU does not report, and ``Field "x" is not a valid field to query.`` for an
unknown field; ``-i/--id=`` a comma-separated list of indices or UUIDs; ``-lms/--loop-ms=N`` repeats the query
every N ms until killed (the k-th round shows ``series[k]``); ``-L`` lists GPUs; no arguments prints the summary
header with the driver and CUDA versions. ``FAKE_SMI_OLD=1`` plays a driver before the clocks_event_reasons
rename (only ``clocks_throttle_reasons.active`` is known). It never imports ``pytest_sglang_tune``.
"""

import datetime
import json
import os
import sys
import time

UNITS = {"utilization.gpu": "%", "memory.used": "MiB", "memory.total": "MiB", "memory.free": "MiB",
         "power.draw": "W", "clocks.sm": "MHz", "clocks.current.sm": "MHz"}


def spec():
    path = os.environ.get("FAKE_NVML_SPEC")
    if not path or not os.path.exists(path):
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
              "latest NVIDIA driver is installed and running.")
        raise SystemExit(9)
    with open(path) as fh:
        return json.load(fh)


def at(dev, key, k, default):
    series = (dev.get("series") or {}).get(key) or [default]
    return series[k % len(series)]


def value(field, i, dev, k, s):
    used = int(at(dev, "mem_used_mib", k, 0))
    total = int(dev.get("memory_total_mib", 143771))
    reasons = f"0x{int(at(dev, 'reasons', k, 0)):016x}"
    table = {
        "timestamp": datetime.datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3],
        "index": str(i), "uuid": dev["uuid"], "name": dev.get("name", "NVIDIA H200"),
        "pci.bus_id": dev.get("pci_bus_id", f"00000000:{i:02X}:00.0"), "driver_version": s.get("driver", "550.54.15"),
        "count": str(len(s["devices"])), "memory.total": str(total), "memory.used": str(used),
        "memory.free": str(total - used), "utilization.gpu": str(int(at(dev, "util", k, 0))),
        "power.draw": f"{float(at(dev, 'power_w', k, 70.0)):.2f}",
        "clocks.sm": str(int(at(dev, "sm_clock_mhz", k, 345))),
        "clocks.current.sm": str(int(at(dev, "sm_clock_mhz", k, 345))),
        "temperature.gpu": str(int(at(dev, "temp_c", k, 30))),
        "clocks_throttle_reasons.active": reasons,
    }
    if not os.environ.get("FAKE_SMI_OLD"):
        table["clocks_event_reasons.active"] = reasons
    if field not in table:
        return None
    if dev.get("na") and field in dev["na"]:
        return "[N/A]"
    return table[field]


def main(argv):
    opts = {}
    it = iter(argv)
    for a in it:
        if a.startswith("--") and "=" in a:
            k, _, v = a.partition("=")
            opts[k] = v
        elif a in ("-i", "--id", "-lms", "--loop-ms", "-l", "--loop"):
            opts[{"-i": "--id", "-lms": "--loop-ms", "-l": "--loop"}.get(a, a)] = next(it)
        else:
            opts[a] = ""
    s = spec()
    devices = list(enumerate(s["devices"]))
    if "-L" in opts or "--list-gpus" in opts:
        for i, d in devices:
            print(f"GPU {i}: {d.get('name', 'NVIDIA H200')} (UUID: {d['uuid']})")
        return 0
    if "--query-gpu" not in opts:
        drv, cuda = s.get("driver", "550.54.15"), int(s.get("cuda", 12040))
        print("+" + "-" * 89 + "+")
        print(f"| NVIDIA-SMI {drv:<22} Driver Version: {drv:<14} CUDA Version: {cuda // 1000}.{cuda % 1000 // 10:<8}|")
        print("+" + "-" * 89 + "+")
        return 0
    fields = [f.strip() for f in opts["--query-gpu"].split(",")]
    fmt = opts.get("--format", "csv").split(",")
    if fmt[0] != "csv":
        print(f'"{fmt[0]}" is not a valid format.')
        return 2
    for f in fields:
        if value(f, 0, s["devices"][0], 0, s) is None:
            print(f'Field "{f}" is not a valid field to query.\n')
            return 2
    if "--id" in opts:
        chosen = []
        for want in opts["--id"].split(","):
            found = [(i, d) for i, d in devices if want == str(i) or want == d["uuid"]]
            if not found:
                print(f"No devices were found matching {want}")  # the real wording differs by version
                return 6
            chosen += found
        devices = chosen
    loop_ms = int(opts.get("--loop-ms") or 0) or int(float(opts.get("--loop") or 0) * 1000)
    if "noheader" not in fmt:
        print(", ".join(f if "nounits" in fmt or f not in UNITS else f"{f} [{UNITS[f]}]" for f in fields))
    k = 0
    while True:
        for i, d in devices:
            vals = [value(f, i, d, k, s) for f in fields]
            if "nounits" not in fmt:
                vals = [v if f not in UNITS or v == "[N/A]" else f"{v} {UNITS[f]}"
                        for f, v in zip(fields, vals, strict=True)]
            print(", ".join(vals), flush=True)
        if not loop_ms:
            return 0
        k += 1
        time.sleep(loop_ms / 1000)


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        raise SystemExit(0) from None
