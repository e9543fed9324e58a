"""The app `tunelab serve` runs: the OpenAI-compatible API, the studio beside it, and the job worker.

    tunelab serve                      # builds this app with `create_app()` and runs it with uvicorn

The API's routes live under `/v1` (what `OpenAI(base_url=".../v1")` calls) and are mirrored under `/openai` and
`/openai/v1` for `AzureOpenAI`. The studio (`tunelab/web/`) is served at `/`. Every route but `/health` and the
studio's page and assets needs an API key. This module only puts the parts together: the routes, wire types and
services are in `api/`, the pages in `web/`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Security
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool

from . import __version__
from .api import ROUTERS
from .api.errors import add_error_handlers
from .api.guard import Guard
from .api.services import Services
from .config import Settings, get_settings
from .jobs.worker import Worker
from .web import routes as studio


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    settings = settings or get_settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.open()
        services.evaluations.loop = asyncio.get_running_loop()  # comparisons started from the worker run here
        worker = Worker(settings, services.db, services.queue, services.store,
                        on_finished=services.evaluations.after_job) if run_worker else None
        if worker:
            worker.start()
        services.live.resume_all()
        app.state.worker = worker
        yield
        await run_in_threadpool(services.exports.runner.stop)  # a running export stops at its next report
        if worker:  # running jobs checkpoint and go back to the queue; they resume on the next start
            await run_in_threadpool(worker.shutdown)
        await run_in_threadpool(services.live.close)  # engine servers tunelab started stop with it
        await run_in_threadpool(services.pool.close)  # answers still streaming end with an error

    app = FastAPI(title="tunelab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Fine-tune, deploy and compare chat models locally, through the OpenAI API.")
    app.state.service = services
    # The Guard middleware checks keys on every route; these dependencies only declare it in /openapi.json.
    documented = [Security(HTTPBearer(auto_error=False)), Security(APIKeyHeader(name="api-key", auto_error=False))]
    for prefix, shown in (("/v1", True), ("/openai", False), ("/openai/v1", False)):
        for router in ROUTERS:
            app.include_router(router, prefix=prefix, include_in_schema=shown, dependencies=documented)

    @app.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness, without a key."""
        return {"status": "ok", "version": __version__}

    app.include_router(studio.router)
    studio.mount_assets(app)
    add_error_handlers(app)
    app.add_middleware(Guard, keys=services.keys, is_open=studio.is_open)
    return app
