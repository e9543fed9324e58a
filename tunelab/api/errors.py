"""The OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`: every error leaves the API in it,
translated here and nowhere else."""

from __future__ import annotations

import math
import sqlite3
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..deploy.deployments import DeploymentNotReady
from ..deploy.limits import RateLimited
from ..errors import AuthenticationFailed, TunelabError
from ..safety.policy import ContentFiltered


def error(status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
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
        response = error(exc.status, exc.message, type=kind, param=exc.param, code=exc.code, headers=headers)
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
        return error(400, message, param=param, code="invalid_value" if first.get("type") != "missing"
                      else "missing_required_parameter")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        messages = {404: f"no route {request.method} {request.url.path}",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names only the first route on the path; RFC 9110 wants all
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)),
                      code="not_found" if exc.status_code == 404 else None, headers=headers)

    @app.exception_handler(sqlite3.OperationalError)
    async def store_unavailable(request: Request, exc: sqlite3.OperationalError):
        # Locked past the busy timeout, or the disk is full: transient, and the SDK retries a 503.
        print(f"tunelab: {request.method} {request.url.path}: state database: {exc}", file=sys.stderr)
        return error(503, f"the state database is unavailable ({exc}); try again shortly", type="server_error",
                      code="store_unavailable")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        print(f"tunelab: {request.method} {request.url.path} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return error(500, "the server hit an unexpected error; see its log", type="server_error")


def _allowed_methods(request: Request) -> list[str]:
    methods = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"}) if hasattr(route, "matches") else (None, None)
        if match is not None and match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
