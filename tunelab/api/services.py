"""The service's parts, built once from the settings: the domain objects (each the owner of its tables) and, over
them, one service per endpoint group, shared by the routes and the worker."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ..config import Settings
from ..deploy.deployments import Deployments
from ..deploy.engines import Engines
from ..evaluate.runs import Runs
from ..inference.pool import EnginePool
from ..jobs.queue import Queue
from ..models.registry import Registry
from ..safety.policy import Policies
from ..store.completions import CompletionStore
from ..store.db import Database
from ..store.evals import Evals
from ..store.exports import Exports
from ..store.files import Files
from ..store.uploads import Uploads
from .auth import Keys
from .chat.service import ChatService
from .content_filters.service import ContentFiltersService
from .deployments.service import DeploymentsService
from .evals.service import EvalsService
from .evaluations.service import EvaluationsService, ServedCandidates
from .exports.runner import ExportRunner
from .exports.service import ExportsService
from .files.service import FilesService
from .jobs.service import JobsService
from .models.service import ModelsService
from .storage.service import StorageService
from .stored.service import StoredCompletionsService
from .uploads.service import UploadsService


@dataclass
class Services:
    settings: Settings
    db: Database
    keys: Keys
    # the domain
    store: Files
    parts: Uploads  # uploads in parts, until they become files
    queue: Queue
    registry: Registry
    pool: EnginePool
    runs: Runs
    exported: Exports  # exports and their files
    # one service per endpoint group
    files: FilesService
    uploads: UploadsService
    jobs: JobsService
    models: ModelsService
    chat: ChatService
    deployments: DeploymentsService
    content_filters: ContentFiltersService
    evaluations: EvaluationsService
    storage: StorageService
    exports: ExportsService
    live: Deployments  # the deployments themselves: provisioned again at each start
    completions: CompletionStore  # chat answers kept with `store: true`
    stored: StoredCompletionsService
    evals: EvalsService  # the evals API: evals, runs, output items

    @classmethod
    def build(cls, settings: Settings) -> "Services":
        state = settings.state_dir
        db = Database(state / "tunelab.db")
        files = Files(db, state / "files", settings.max_file_bytes)
        parts = Uploads(db, state / "uploads", files)
        queue = Queue(db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
        registry = Registry(db, settings.owner)
        pool = EnginePool(registry, settings.decode_weights, settings.prompt_cache_mb)
        policies = Policies(db, settings.content_filter_outage)
        engines = Engines(registry, pool, settings.home, llama_server=settings.llama_server,
                          vllm_command=settings.vllm_command, start_timeout=settings.engine_start_timeout)
        deployments = Deployments(db, registry, pool, policies, engines)
        runs = Runs(db)
        exported = Exports(db, settings.home.expanduser() / "exports")
        completions = CompletionStore(db)
        chat = ChatService(deployments, policies, pool, completions)
        return cls(
            settings=settings, db=db, keys=Keys(settings.home, settings.api_key),
            store=files, parts=parts, queue=queue, registry=registry, pool=pool, runs=runs,
            exported=exported,
            files=FilesService(db, files, queue, registry, settings),
            uploads=UploadsService(parts),
            jobs=JobsService(db, queue, files, registry, deployments, settings),
            models=ModelsService(db, registry, queue, deployments, pool, exported),
            chat=chat,
            deployments=DeploymentsService(deployments),
            content_filters=ContentFiltersService(db, policies, deployments),
            evaluations=EvaluationsService(db, runs, files, queue, registry, deployments,
                                           ServedCandidates(chat, deployments, pool), settings),
            storage=StorageService(db, settings.models_dir, exported.root),
            exports=ExportsService(exported, registry, ExportRunner(exported, registry)),
            live=deployments, completions=completions, stored=StoredCompletionsService(completions, files),
            evals=EvalsService(Evals(db), files, completions, deployments, registry,
                               ServedCandidates(chat, deployments, pool), settings))

    def open(self) -> None:
        """Check and migrate the database and clear what an earlier crash left half-written."""
        if self.db.path.exists():
            self.db.check_integrity()
        self.db.migrate()
        self.store.sweep()
        self.parts.sweep()
        self.runs.recover()
        self.evals.store.recover()
        self.exported.recover()


def services(request: Request) -> Services:
    """The services of the app serving `request` (a route dependency)."""
    return request.app.state.service
