"""The HTTP service: an OpenAI-compatible API (files, fine-tuning jobs, models) with the job worker beside it.

    tunelab serve                      # builds this app with `create_app()` and runs it with uvicorn

Routes live under `/v1` (what `OpenAI(base_url=".../v1")` calls) and are mirrored under `/openai` and
`/openai/v1` for `AzureOpenAI`. The studio (`tunelab/web/`) is served at `/`. Every route but `/health` and the
studio's page and assets needs an API key. Every error leaves in the OpenAI envelope
`{"error": {"message", "type", "param", "code"}}`, translated here and nowhere else.
"""

from __future__ import annotations

import asyncio

import math
import secrets
import sqlite3
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .. import __version__
from ..config import Settings, get_settings
from ..deploy.limits import RateLimited
from ..deploy.service import DeploymentNotReady
from ..safety.policy import ContentFiltered
from ..errors import TunelabError
from ..jobs.worker import Worker
from .auth import AuthenticationFailed, presented_key
from ..web import routes as studio
from .routes import chat, content_filters, defaults, deployments, evaluations, files, jobs, models, storage
from .service import Service

OPEN_PATHS = {"/health"}
MAX_JSON_BYTES = 1 << 20  # request bodies other than file uploads


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    settings = settings or get_settings()
    service = Service.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.open()
        service.evaluations.loop = asyncio.get_running_loop()  # comparisons started from the worker run here
        worker = Worker(settings, service.db, service.queue, service.files,
                        on_finished=lambda job_id: service.evaluations.after_job(service, job_id)) \
            if run_worker else None
        if worker:
            worker.start()
        service.deployments.resume_all()
        app.state.worker = worker
        yield
        if worker:  # running jobs checkpoint and go back to the queue; they resume on the next start
            await run_in_threadpool(worker.shutdown)

    app = FastAPI(title="tunelab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Fine-tune, deploy and compare chat models locally, through the OpenAI API.")
    app.state.service = service
    # The Guard middleware checks keys on every route; these dependencies only declare it in /openapi.json.
    documented = [Security(HTTPBearer(auto_error=False)), Security(APIKeyHeader(name="api-key", auto_error=False))]
    for prefix, shown in (("/v1", True), ("/openai", False), ("/openai/v1", False)):
        for module in (files, jobs, defaults, models, chat, deployments, content_filters, evaluations, storage):
            app.include_router(module.router, prefix=prefix, include_in_schema=shown, dependencies=documented)

    @app.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness, without a key."""
        return {"status": "ok", "version": __version__}

    app.include_router(studio.router)
    studio.mount_assets(app)
    _add_error_handlers(app)
    app.add_middleware(Guard, service=service)
    return app


def _error(status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TunelabError)
    async def tunelab_error(request: Request, exc: TunelabError):
        kind = "authentication_error" if isinstance(exc, AuthenticationFailed) else \
            ("server_error" if exc.status >= 500 else exc.type)
        headers = None
        if isinstance(exc, RateLimited):  # how long to wait, in both forms the SDK reads
            headers = {**exc.headers, "Retry-After": str(math.ceil(exc.retry_after)),
                       "retry-after-ms": str(math.ceil(exc.retry_after * 1000))}
        elif isinstance(exc, DeploymentNotReady):
            headers = {"Retry-After": "2"}
        response = _error(exc.status, exc.message, type=kind, param=exc.param, code=exc.code, headers=headers)
        if isinstance(exc, ContentFiltered):  # Azure's shape: the findings per category ride along
            body = {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code,
                              "status": 400, "innererror": exc.innererror}}
            response = JSONResponse(body, status_code=400)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = f"unknown parameter {param!r}"
        elif first.get("type") == "missing":
            message = f"missing required parameter {param!r}"
        elif param:
            message = f"{param}: {message}"
        if len(exc.errors()) > 1:
            message += f" (and {len(exc.errors()) - 1} more problems)"
        return _error(400, message, param=param, code="invalid_value" if first.get("type") != "missing"
                      else "missing_required_parameter")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        messages = {404: f"no route {request.method} {request.url.path}",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names only the first route on the path; RFC 9110 wants all
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return _error(exc.status_code, messages.get(exc.status_code, str(exc.detail)),
                      code="not_found" if exc.status_code == 404 else None, headers=headers)

    @app.exception_handler(sqlite3.OperationalError)
    async def store_unavailable(request: Request, exc: sqlite3.OperationalError):
        # Locked past the busy timeout, or the disk is full: transient, and the SDK retries a 503.
        print(f"tunelab: {request.method} {request.url.path}: state database: {exc}", file=sys.stderr)
        return _error(503, f"the state database is unavailable ({exc}); try again shortly", type="server_error",
                      code="store_unavailable")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        print(f"tunelab: {request.method} {request.url.path} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _error(500, "the server hit an unexpected error; see its log", type="server_error")


def _allowed_methods(request: Request) -> list[str]:
    methods = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"}) if hasattr(route, "matches") else (None, None)
        if match is not None and match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


class Guard:
    """ASGI middleware run before any route: checks the API key, caps JSON bodies, adds `x-request-id`."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = f"req_{secrets.token_hex(12)}"

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] not in OPEN_PATHS and not studio.is_open(scope["method"], scope["path"]):
            try:
                self.service.keys.check(presented_key(headers))
            except AuthenticationFailed as exc:
                response = _error(401, exc.message, type="authentication_error", code=exc.code)
                return await response(scope, receive, send_with_id)
        repeated = _repeated_query_parameter(scope)
        if repeated:  # every query parameter here takes one value; two would be ambiguous
            response = _error(400, f"the query parameter {repeated!r} is given more than once", param=repeated)
            return await response(scope, receive, send_with_id)
        if not _is_upload(scope):
            declared = headers.get("content-length")
            too_large = _error(413, f"the request body is larger than {MAX_JSON_BYTES:,} bytes",
                               code="request_too_large")
            if declared and declared.isdigit() and int(declared) > MAX_JSON_BYTES:
                return await too_large(scope, receive, send_with_id)
            if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # A body sent without Content-Length (chunked) is read here, up to the cap, and replayed.
                body = await _read_capped(receive)
                if body is None:
                    return await too_large(scope, receive, send_with_id)
                receive = _replay(body, receive)
        await self.app(scope, receive, send_with_id)


def _repeated_query_parameter(scope) -> str | None:
    from urllib.parse import parse_qsl

    seen = set()
    for key, _ in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if key in seen:
            return key
        seen.add(key)
    return None


def _is_upload(scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/files")


async def _read_capped(receive) -> bytes | None:
    """The whole body, or None once it passes MAX_JSON_BYTES."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > MAX_JSON_BYTES:
            return None
        if not message.get("more_body"):
            return bytes(body)


def _replay(body: bytes, receive):
    """The body once, then the client's own messages (a disconnect, when it comes)."""
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
