"""The storage service: the disk report clean-up starts from, and compaction of the state database after it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...store.db import Database
from ...store.usage import usage
from .protocol import Compaction, Storage


@dataclass
class StorageService:
    db: Database
    models_dir: Path
    exports_dir: Path

    def report(self) -> Storage:
        return Storage(**usage(self.db, self.models_dir, self.exports_dir))

    def compact(self) -> Compaction:
        before = self.db.bytes()
        return Compaction(database_bytes_before=before, database_bytes=self.db.compact())
