"""A small headless-Chromium driver over the DevTools protocol (websocket-client; no Playwright, no downloads).

    with Chromium.launch(path) as browser:
        page = browser.open(Path("report.html"))       # waits for the load event
        page.evaluate("document.title")                 # run JS, get the value back (returnByValue)
        page.errors                                     # console errors, uncaught exceptions, failed requests
        page.requests                                   # every URL the page asked for
        page.screenshot(Path("shot.png"))
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars")


class CDPError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """``$SGLANG_TUNE_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH."""
    env = os.environ.get("SGLANG_TUNE_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab: a websocket to its target, with the events we care about collected as they arrive."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def _record(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method", ""), msg.get("params") or {}
        self.events.append(msg)
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails") or {}
            self.errors.append(f"exception: {(d.get('exception') or {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args") or [])
            self.errors.append(f"console.{p.get('type')}: {args}")
        elif method == "Log.entryAdded" and (p.get("entry") or {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url') or ''}".strip())
        elif method == "Network.requestWillBeSent":
            self.requests.append(str((p.get("request") or {}).get("url")))
        elif method == "Network.loadingFailed":
            self.errors.append(f"request failed: {p.get('errorText')}")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})
            self._record(msg)
        raise CDPError(f"{method}: no answer within {self.timeout} s")

    def wait_for(self, method: str) -> dict[str, Any]:
        for msg in self.events:
            if msg.get("method") == method:
                return msg
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self._record(msg)
            if msg.get("method") == method:
                return msg
        raise CDPError(f"no {method} within {self.timeout} s")

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.evaluate("1")  # drain the events the load produced before anyone reads .errors

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"{expression[:80]!r}: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return (res.get("result") or {}).get("value")

    def set_viewport(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def screenshot(self, path: Path, *, full_page: bool = False, clip_height: int | None = None) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page or clip_height:
            width = int(self.evaluate("document.documentElement.scrollWidth"))
            height = int(self.evaluate("document.documentElement.scrollHeight"))
            if clip_height:
                height = min(height, clip_height)
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height,
                                                            "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """A headless Chromium process with a fresh profile and a DevTools port chosen by the browser."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="sglang-tune-chromium-")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(Path(self.profile) / "chromium.log", "wb")  # closed in close()
        self.port = 0

    @classmethod
    def launch(cls, path: str, timeout: float = 30.0) -> Chromium:
        browser = cls(path, timeout)
        browser.start()
        return browser

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.path, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.flush()
                err = (Path(self.profile) / "chromium.log").read_text(errors="replace")[-2000:]
                raise CDPError(f"{self.path} exited with {self.proc.returncode} before DevTools came up:\n{err}")
            if port_file.exists():
                text = port_file.read_text().split()
                if text:
                    self.port = int(text[0])
                    return
            time.sleep(0.05)
        self.close()
        raise CDPError(f"{self.path} did not open a DevTools port within {self.timeout} s")

    def _json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def page(self) -> Page:
        targets = [t for t in self._json("/json/list") if t.get("type") == "page"]
        if not targets:
            raise CDPError("no page target")
        return Page(str(targets[0]["webSocketDebuggerUrl"]), self.timeout)

    def open(self, file: Path, width: int = 1400, height: int = 1000) -> Page:
        page = self.page()
        page.set_viewport(width, height)
        page.navigate(file.resolve().as_uri())
        return page

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
