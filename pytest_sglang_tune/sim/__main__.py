"""``python -m pytest_sglang_tune.sim --model-path Qwen/Qwen3-8B --port 30000 [SGLang flags]``.

Exit codes: 0 after SIGINT/SIGTERM, 1 when the server cannot start (bad ``SGLANG_SIM_*`` setting, unknown model,
not enough GPUs or memory, port in use), 2 for command-line errors (argparse, as ``sglang.launch_server``).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys

from pytest_sglang_tune.sim.models import SimConfigError

log = logging.getLogger("sglang_sim")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="[%(asctime)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if logging.getLogger().level > logging.DEBUG:  # aiconfigurator logs its data loading at INFO/WARNING
        logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SimConfigError(f"port {port} is already in use (host {host})") from None
        raise SimConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve(srv: object, sock: socket.socket) -> int:
    from aiohttp import web

    from pytest_sglang_tune.sim.app import build_app
    from pytest_sglang_tune.sim.server import SimServer

    assert isinstance(srv, SimServer)
    app = build_app(srv)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=1.0)
    await site.start()
    host, port = sock.getsockname()[:2]
    log.info("Uvicorn running on http://%s:%s (simulated SGLang server, pid %d)", host, port, os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await srv.startup()
    except Exception:
        code = 1
        stop.set()
    else:
        gc.freeze()  # the perf tables and tokenizer stay put: keep them out of every collection (fewer pauses)
    await stop.wait()
    if srv.driver is not None:
        srv.driver.stop()
    await runner.cleanup()
    return code


def main(argv: list[str] | None = None) -> int:
    from pytest_sglang_tune.errors import FlagError
    from pytest_sglang_tune.sim.config import SimSettings, parse_server_args, resolve_server

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = SimSettings.from_env(os.environ)
        values, given, version = parse_server_args(args, settings.sglang_version)
    except (SimConfigError, FlagError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _setup_logging(str(values.get("log_level") or "info"))
    shown = {k: v for k, v in sorted(values.items()) if k in given and k not in ("api_key", "admin_api_key")}
    log.info("server_args=%s (simulated SGLang %s, GPU %s)", shown, version, settings.gpu)
    try:
        resolved = resolve_server(values, given, version, settings)
        sock = _bind(str(values.get("host") or "127.0.0.1"), int(values.get("port") or 30000))
    except SimConfigError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from pytest_sglang_tune.sim.loader import start_loading

    loading = start_loading(resolved)  # about a second of work: overlap it with the imports below
    from pytest_sglang_tune.sim.server import SimServer

    srv = SimServer(resolved, args)
    srv.attach(loading)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional (extra "fast")
        return asyncio.run(_serve(srv, sock))
    return int(uvloop.run(_serve(srv, sock)))


if __name__ == "__main__":
    sys.exit(main())
