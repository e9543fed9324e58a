"""The OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`: every error leaves the API in it,
translated here and nowhere else.

Clients get a stable message and code; what went wrong inside (an SQLite message, an exception's text) goes to
the server's log only. Trouble that passes by itself (the database busy past its timeout, a full disk) is a 503
the SDK retries; anything unexpected is a programming error: 500 `server_error`, marked not worth retrying.
"""

from __future__ import annotations

import errno
import math
import sqlite3
import sys
import traceback

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
        elif getattr(exc, "retry_after", None):  # an engine server that is down, restarting or busy
            headers = {"Retry-After": str(math.ceil(exc.retry_after))}
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

    @app.exception_handler(sqlite3.Error)
    async def store_failed(request: Request, exc: sqlite3.Error):
        _log(request, exc)
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return unavailable("the state database is busy; try again shortly", "store_unavailable")
        if name.startswith("SQLITE_FULL"):
            return unavailable(DISK_FULL, "disk_full")
        if name.startswith("SQLITE_IOERR"):
            return unavailable("the service could not read or write its state database; try again shortly",
                               "store_unavailable")
        traceback.print_exception(exc, file=sys.stderr)  # a bug (a bad statement, a broken constraint)
        return unexpected_error()

    @app.exception_handler(OSError)
    async def os_failed(request: Request, exc: OSError):
        _log(request, exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return unavailable(DISK_FULL, "disk_full")
        traceback.print_exception(exc, file=sys.stderr)
        return unexpected_error()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        _log(request, exc)  # the server re-raises it after this answer, and its log shows the traceback
        return unexpected_error()


DISK_FULL = "the service's disk is full; nothing was saved. Try again once space has been freed"


def unavailable(message: str, code: str) -> JSONResponse:
    """A 503 that passes by itself: the SDK retries it after Retry-After."""
    return error(503, message, type="server_error", code=code, headers={"Retry-After": "1", "x-should-retry": "true"})


def unexpected_error() -> JSONResponse:
    """A programming error: retrying the same request would fail the same way."""
    return error(500, "the server hit an unexpected error; see its log", type="server_error", code="server_error",
                 headers={"x-should-retry": "false"})


def _log(request: Request, exc: BaseException) -> None:
    """The details, for the server's log only."""
    print(f"tunelab: {request.method} {request.url.path} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def _allowed_methods(request: Request) -> list[str]:
    methods = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"}) if hasattr(route, "matches") else (None, None)
        if match is not None and match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
