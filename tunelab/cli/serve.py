"""`tunelab serve`: the API, the job worker and the studio in one process, on loopback unless told otherwise.

    tunelab serve                       # http://127.0.0.1:8000/v1, prints a new API key on first start
                                        # and the studio's sign-in link, http://127.0.0.1:8000/?token=…
    TUNELAB_API_KEY=... tunelab serve --host 0.0.0.0   # other machines may connect: a key is required
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

from .. import __version__
from ..api.auth import Keys, is_loopback
from ..config import Settings
from ..errors import InvalidRequest
from ..store.db import Database
from ..store.home import private_home
from ..threads import reserve_cores


def serve(settings: Settings, console: Console) -> None:
    reserve_cores()  # before torch is imported: the inference engine's thread gets the cores
    import uvicorn

    from ..app import create_app
    from ..evaluate.checks import choose

    choose(configured=settings.checks)  # a check that does not load (TUNELAB_CHECKS, a plugin) stops the start
    keys = Keys(settings.home, settings.api_key)
    if not is_loopback(settings.host) and not keys.configured():
        raise InvalidRequest(f"refusing to listen on {settings.host} without an API key: set TUNELAB_API_KEY (or "
                             f"write one to {keys.path}) first", param="host")
    private_home(settings.home)
    lock = _lock(settings)  # held until the process exits
    check_database(settings)
    new_key = None if keys.configured() else keys.generate()
    url = f"http://{settings.host if ':' not in settings.host else f'[{settings.host}]'}:{settings.port}"
    def say(text: str) -> None:  # whole lines, never wrapped: the key and the export line are copied
        console.print(text, soft_wrap=True, highlight=False)

    say(f"[bold]tunelab {__version__}[/bold] serving the OpenAI-compatible API at [bold]{url}/v1[/bold]")
    if new_key:
        say(f"API key (shown once, stored hashed in {keys.path}):\n  [bold]{new_key}[/bold]\n"
            f"  export TUNELAB_API_KEY={new_key} TUNELAB_BASE_URL={url}")
    else:
        say(f"API keys: from {'TUNELAB_API_KEY' if settings.api_key else keys.path}")
    app = create_app(settings)
    token = app.state.service.keys.add_session()  # valid while this server runs, like Jupyter's token
    say(f"Studio (this link signs you in until the server stops): [bold]{studio_link(url, token)}[/bold]")
    say(f"State: {settings.state_dir}  ·  Ctrl-C stops; running jobs checkpoint and resume on the next start")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    del lock


def studio_link(url: str, key: str) -> str:
    """The studio's sign-in link; a wildcard bind address is opened through loopback."""
    for wildcard in ("//0.0.0.0:", "//[::]:"):
        url = url.replace(wildcard, "//127.0.0.1:")
    return f"{url}/?token={key}"


@contextmanager
def embedded(settings: Settings) -> Iterator[tuple[str, str]]:
    """The service in this process, on a free loopback port, with a one-off key: `(base_url, api_key)`.
    For walkthroughs that need a server for a while (`tunelab lab`)."""
    reserve_cores()
    import secrets
    import socket
    import threading
    import time

    import uvicorn

    from ..app import create_app

    key = f"tl-lab-{secrets.token_urlsafe(18)}"
    private_home(settings.home)
    lock = _lock(settings)
    check_database(settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(settings.model_copy(update={"api_key": key, "host": "127.0.0.1", "port": port}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="tunelab-embedded-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise InvalidRequest(f"the embedded tunelab server could not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        thread.join(30)
        del lock


def check_database(settings: Settings) -> None:
    """Refuse to start on a damaged state database (StoreCorrupt names the file and what to do)."""
    db = Database(settings.state_dir / "tunelab.db")
    if db.path.exists():
        try:
            db.check_integrity()
        finally:
            db.close()


def _lock(settings: Settings):
    """One server per TUNELAB_HOME: a second one would run the same jobs twice."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(settings.state_dir / "serve.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InvalidRequest(f"another `tunelab serve` is already using {settings.home}; stop it or set a "
                             "different TUNELAB_HOME", param="home") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
