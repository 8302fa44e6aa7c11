"""Launchers used by end-to-end tests: wrappers around the real simulated server that misbehave on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request


def drop_flag(argv: list[str], flag: str) -> list[str]:
    """Remove ``flag`` and its value from argv (the bug of a deployer that loses tuned flags)."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == flag:
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            skip = not nxt.startswith("--")
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def main() -> int:
    mode, rest = sys.argv[1], sys.argv[2:]
    sim = [sys.executable, "-m", "pytest_sglang_tune.sim"]
    if mode.startswith("drop:"):
        os.execv(sys.executable, [*sim, *drop_flag(rest, mode.removeprefix("drop:"))])
    if mode.startswith("crash-after:"):
        # serve normally, then die (as an OOM kill would) a few seconds after becoming ready, once only
        marker = os.environ["CRASH_MARKER"]
        child = subprocess.Popen([*sim, *rest])
        if os.path.exists(marker):
            return child.wait()
        port = rest[rest.index("--port") + 1]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(float(mode.removeprefix("crash-after:")))
        open(marker, "w").close()
        print("torch.OutOfMemoryError: CUDA out of memory (simulated crash)", flush=True)
        child.send_signal(signal.SIGKILL)
        child.wait()
        return 137
    if mode.startswith("fail-with:"):
        # refuse to start when argv has this flag value and $FAIL_WITH_ON is set (a config that cannot start today)
        flag, _, value = mode.removeprefix("fail-with:").partition("=")
        args = " ".join(rest)
        if os.environ.get("FAIL_WITH_ON") and (f"{flag} {value}" in args or f"{flag}={value}" in args):
            print(f"RuntimeError: simulated start-up failure for {flag}={value}", flush=True)
            return 1
        os.execv(sys.executable, [*sim, *rest])
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    raise SystemExit(main())
