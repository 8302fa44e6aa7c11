"""The simulated server's aiohttp application: authentication, the control endpoints, and the OpenAI/SGLang
endpoints of :mod:`.api`, on one :class:`~.server.SimServer`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pytest_sglang_tune.sim import api
from pytest_sglang_tune.sim.server import OPEN_PATHS, SimServer, json_response, model_card


def build_app(srv: SimServer) -> web.Application:
    api_key = srv.cfg.args.get("api_key")
    admin_key = srv.cfg.args.get("admin_api_key")

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if (api_key or admin_key) and not request.path.startswith(OPEN_PATHS):
            header = request.headers.get("Authorization", "")
            token = header[7:] if header.startswith("Bearer ") else None
            if token is None or token not in (api_key, admin_key):
                return json_response({"error": "Unauthorized"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def health(request: web.Request) -> web.Response:
        if not srv.ready:
            return web.Response(status=503, text="")
        return web.Response(status=200 if await srv.health_probe() else 503, text="")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200 if srv.ready else 503, text="")

    async def server_info(request: web.Request) -> web.Response:
        return json_response(srv.server_info())

    async def model_info(request: web.Request) -> web.Response:
        return json_response(srv.model_info())

    async def models(request: web.Request) -> web.Response:
        return json_response({"object": "list", "data": [model_card(srv)]})

    async def one_model(request: web.Request) -> web.Response:
        if request.match_info["model"] != srv.cfg.served_model_name:
            return json_response(
                {
                    "object": "error",
                    "message": f"The model `{request.match_info['model']}` does not exist.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": "model_not_found",
                },
                status=404,
            )
        return json_response(model_card(srv))

    async def flush_cache(request: web.Request) -> web.Response:
        if srv.engine is not None and srv.engine.flush_cache():
            return web.Response(
                text="Cache flushed.\nPlease check backend logs for more details. (When there are "
                "running or waiting requests, the operation will not be performed.)\n"
            )
        return web.Response(
            status=400,
            text="Cache not flushed. Please check backend logs for more details. "
            "(When there are running or waiting requests, the operation will not "
            "be performed.)\n",
        )

    async def metrics(request: web.Request) -> web.Response:
        stats = srv.engine.replica_stats() if srv.engine else []
        text = srv.metrics.render(
            stats, context_len=srv.cfg.context_len, page_size=srv.cfg.engine.page_size, lag=srv.lag_info()
        )
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8", headers={"X-Content-Type-Options": "nosniff"}
        )

    app = web.Application(middlewares=[auth], client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_get("/health_generate", health)
    if not srv.cfg.sglang_version.startswith("0.5.5"):
        app.router.add_get("/ready", ready)
    for path in ("/server_info", "/get_server_info"):
        app.router.add_get(path, server_info)
    for path in ("/model_info", "/get_model_info"):
        app.router.add_get(path, model_info)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", one_model)
    app.router.add_route("GET", "/flush_cache", flush_cache)
    app.router.add_route("POST", "/flush_cache", flush_cache)
    if srv.cfg.args.get("enable_metrics"):
        app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", api.chat_completions(srv))
    app.router.add_post("/v1/completions", api.completions(srv))
    generate = api.generate(srv)
    app.router.add_route("POST", "/generate", generate)
    app.router.add_route("PUT", "/generate", generate)
    from pytest_sglang_tune.sim.control import add_control_routes

    add_control_routes(app, srv)
    return app
