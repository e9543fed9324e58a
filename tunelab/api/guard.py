"""The ASGI middleware in front of every route: API keys (or a studio session), one value per query parameter, the
cap on JSON bodies, and an `x-request-id` on every answer.

A request is let in by an API key in a header (`Authorization: Bearer`, `api-key`; never in the query string) or,
for the studio's pages, by a live session cookie together with the studio's `X-Requested-With` header. A page of
another origin cannot add that header without a CORS preflight, which this service never grants, so a cookie sent
along with a forged form or link gets nothing.
"""

from __future__ import annotations

import re
import secrets
from typing import Callable
from urllib.parse import parse_qsl

from ..errors import AuthenticationFailed
from .auth import Keys, presented_key
from .errors import error

OPEN_PATHS = {"/health"}
MAX_JSON_BYTES = 1 << 20  # request bodies other than file uploads
# The one route whose body is a file, under each prefix the API is mounted at (see app.py): it streams the body
# into a capped blob writer itself.
PREFIXES = ("/v1", "/openai", "/openai/v1")
UPLOAD_PATHS = {f"{prefix}/files" for prefix in PREFIXES}
# A part of an upload in parts (/uploads/{id}/parts) is capped by its own route too.
UPLOAD_PART = re.compile(r"^(?:%s)/uploads/[^/]+/parts$" % "|".join(re.escape(p) for p in PREFIXES))
SESSION_COOKIE = "tunelab_session_"  # + the port: the studio's session cookie (set by web/routes.py)
STUDIO_HEADER = ("x-requested-with", "tunelab-studio")


class Guard:
    """ASGI middleware run before any route: checks the API key, caps JSON bodies, adds `x-request-id`.
    `is_open(method, path)` names what is served without a key besides /health (the studio's shell)."""

    def __init__(self, app, keys: Keys, is_open: Callable[[str, str], bool] = lambda method, path: False):
        self.app = app
        self.keys = keys
        self.is_open = is_open

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = f"req_{secrets.token_hex(12)}"

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] not in OPEN_PATHS and not self.is_open(scope["method"], scope["path"]):
            try:
                if not self._studio_session(headers):
                    self.keys.check(presented_key(headers))
            except AuthenticationFailed as exc:
                response = error(401, exc.message, type="authentication_error", code=exc.code)
                return await response(scope, receive, send_with_id)
        repeated = _repeated_query_parameter(scope)
        if repeated:  # every query parameter here takes one value; two would be ambiguous
            response = error(400, f"the query parameter {repeated!r} is given more than once", param=repeated)
            return await response(scope, receive, send_with_id)
        if not _is_upload(scope):
            declared = headers.get("content-length")
            too_large = error(413, f"the request body is larger than {MAX_JSON_BYTES:,} bytes",
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


    def _studio_session(self, headers: dict) -> bool:
        """A request of the studio's pages: no key, the studio's header and a live session cookie."""
        if presented_key(headers) is not None or headers.get(STUDIO_HEADER[0]) != STUDIO_HEADER[1]:
            return False
        if not any(self.keys.sessions.valid(value) for value in session_cookies(headers.get("cookie", ""))):
            raise AuthenticationFailed("this browser is not signed in to the studio (signed out, unused for a "
                                       "day, or the server restarted)")
        return True


def session_cookies(cookie_header: str) -> list[str]:
    """The values of every studio session cookie the browser sent (one per port it signed in to)."""
    found = []
    for pair in cookie_header.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.startswith(SESSION_COOKIE) and value:
            found.append(value)
    return found


def _repeated_query_parameter(scope) -> str | None:
    seen = set()
    for key, _ in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if key in seen:
            return key
        seen.add(key)
    return None


def _is_upload(scope) -> bool:
    path = scope["path"]
    return scope["method"] == "POST" and (path in UPLOAD_PATHS or bool(UPLOAD_PART.match(path)))


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
