"""The studio's routes: the page shell at `/`, its static assets under `/studio/`, and signing in and out.

    http://127.0.0.1:8000/?token=<key>     # what `tunelab serve` prints: starts a session, then shows `/`
    POST   /studio/session {"key": "…"}    # the sign-in form: the same, for a key typed in
    GET    /studio/session                 # {"signed_in": true|false}
    DELETE /studio/session                 # sign out: the session ends on the server

Neither the shell nor the assets hold any data, so they are served without a key. Signing in exchanges a valid key
for a studio session: a random token (not the key) in an HttpOnly, SameSite=Strict cookie named for the port
(servers on other ports of the same host keep theirs). Page scripts never see the token or the key; the browser
sends the cookie, and the pages add the `X-Requested-With: tunelab-studio` header without which the API ignores
it (api/guard.py). The sign-in redirect drops the key from the address bar and history; an invalid one leads to
the sign-in form.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..errors import AuthenticationFailed

STATIC = Path(__file__).parent / "static"
ASSETS = "/studio"  # the static files' prefix
SESSION = ASSETS + "/session"
STUDIO_HEADER = ("x-requested-with", "tunelab-studio")  # what the pages send with every call
SHELL_HEADERS = {
    # The pages run only their own scripts, talk only to this origin and may not be framed by another site.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


class SignIn(BaseModel):
    key: str


def cookie_name(request: Request) -> str:
    return f"tunelab_session_{request.url.port or (443 if request.url.scheme == 'https' else 80)}"


def is_open(method: str, path: str) -> bool:
    """What the API-key check lets through: the shell and its assets (no data in either) and signing in or out
    (each checks what it needs itself)."""
    if path == SESSION:
        return method in ("GET", "POST", "DELETE")
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(ASSETS + "/"))


@router.get("/")
def studio(request: Request, token: str | None = None) -> Response:
    """The studio's page; with `?token=`, sign in first."""
    if token is not None:
        try:
            request.app.state.service.keys.check(token)
        except AuthenticationFailed:
            return RedirectResponse("/#signin=invalid-link", status_code=303, headers=SHELL_HEADERS)
        return _signed_in(request, RedirectResponse("/", status_code=303, headers=SHELL_HEADERS))
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SHELL_HEADERS)


@router.post(SESSION)
def sign_in(request: Request, body: SignIn) -> Response:
    """The sign-in form: a valid key starts a session. Only the pages may ask (their header, a JSON body)."""
    _from_the_pages(request)
    request.app.state.service.keys.check(body.key.strip())
    return _signed_in(request, JSONResponse({"signed_in": True}, headers={"Cache-Control": "no-store"}))


@router.get(SESSION)
def session(request: Request) -> dict:
    """Whether this browser is signed in (the pages cannot read their cookie)."""
    sessions = request.app.state.service.keys.sessions
    return {"signed_in": sessions.valid(request.cookies.get(cookie_name(request)))}


@router.delete(SESSION, status_code=204)
def sign_out(request: Request) -> Response:
    _from_the_pages(request)
    request.app.state.service.keys.sessions.end(request.cookies.get(cookie_name(request)))
    response = Response(status_code=204)
    response.delete_cookie(cookie_name(request), path="/", samesite="strict", httponly=True,
                           secure=request.url.scheme == "https")
    return response


def mount_assets(app) -> None:
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="studio-assets")


def _signed_in(request: Request, response: Response) -> Response:
    token = request.app.state.service.keys.sessions.start()
    response.set_cookie(cookie_name(request), token, path="/", samesite="strict", httponly=True,
                        secure=request.url.scheme == "https")
    return response


def _from_the_pages(request: Request) -> None:
    """Signing in or out only from the studio's own scripts: a form or link of another site cannot add the header."""
    if request.headers.get(STUDIO_HEADER[0]) != STUDIO_HEADER[1]:
        raise AuthenticationFailed("sign in from the studio's page")
