"""The service's parts, built once from the settings and shared by the routes and the worker."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..deploy.service import Deployments
from ..evaluate.service import Evaluations
from ..inference.pool import EnginePool
from ..safety.policy import Policies
from ..jobs.queue import Queue
from ..jobs.service import Jobs
from ..models.registry import Registry
from ..store.db import Database
from ..store.files import Files
from .auth import Keys


@dataclass
class Service:
    settings: Settings
    db: Database
    files: Files
    queue: Queue
    registry: Registry
    jobs: Jobs
    keys: Keys
    pool: EnginePool
    deployments: Deployments
    policies: Policies
    evaluations: Evaluations

    @classmethod
    def build(cls, settings: Settings) -> "Service":
        state = settings.state_dir
        db = Database(state / "tunelab.db")
        files = Files(db, state / "files", settings.max_file_bytes)
        queue = Queue(db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
        registry = Registry(db, settings.owner)
        jobs = Jobs(db, queue, files, registry, state / "jobs", settings.owner)
        pool = EnginePool(registry, settings.decode_weights, settings.prompt_cache_mb)
        policies = Policies(db)
        return cls(settings, db, files, queue, registry, jobs, Keys(settings.home, settings.api_key), pool,
                   Deployments(db, registry, pool, policies), policies, Evaluations(db))

    def open(self) -> None:
        """Check and migrate the database and clear what an earlier crash left half-written."""
        if self.db.path.exists():
            self.db.check_integrity()
        self.db.migrate()
        self.files.sweep()
        self.evaluations.recover()
