"""The studio's routes: the page shell at `/`, its static assets under `/studio/`, and the sign-in link.

    http://127.0.0.1:8000/?token=<key>     # what `tunelab serve` prints: sets the key cookie, then shows `/`

Neither the shell nor the assets hold any data, so they are served without a key; every API call the pages make
carries one. A valid `?token=` is put in a cookie named for the port (servers on other ports of the same host
keep theirs) that the pages read and send as `Authorization: Bearer`; the API itself never reads cookies. The
redirect drops the token from the address bar and history. An invalid one leads to the sign-in form.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import AuthenticationFailed

STATIC = Path(__file__).parent / "static"
ASSETS = "/studio"  # the static files' prefix
SHELL_HEADERS = {
    # The pages run only their own scripts, talk only to this origin and may not be framed by another site.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def cookie_name(request: Request) -> str:
    return f"tunelab_key_{request.url.port or (443 if request.url.scheme == 'https' else 80)}"


def is_open(method: str, path: str) -> bool:
    """What the API-key check lets through: the shell and its assets (no data in either)."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(ASSETS + "/"))


@router.get("/")
def studio(request: Request, token: str | None = None) -> Response:
    """The studio's page; with `?token=`, sign in first."""
    if token is not None:
        try:
            request.app.state.service.keys.check(token)
        except AuthenticationFailed:
            return RedirectResponse("/#signin=invalid-link", status_code=303, headers=SHELL_HEADERS)
        response = RedirectResponse("/", status_code=303, headers=SHELL_HEADERS)
        response.set_cookie(cookie_name(request), token, path="/", samesite="strict",
                            secure=request.url.scheme == "https")
        return response
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SHELL_HEADERS)


def mount_assets(app) -> None:
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="studio-assets")
