"""Exports run in the server process, one at a time, in a thread of their own: an export is a few seconds to a
few minutes of reading weights and writing files, with nothing to resume, so it needs neither the job queue's
leases nor a child process (`jobs/` is for training). The runner calls the domain's `export_model`, writes its
progress to the export's row (at most twice a second), then the files and sizes or why it failed, in words for a
person (the details go to the server's log only, as in `api/errors.py`).

When the server stops, the running export is told to stop at its next progress report and those waiting are
failed; an export the process died in is failed at the next start (`Exports.recover`).
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time

from ...errors import TunelabError
from ...export import ExportRequest, export_model
from ...models.registry import Registry
from ...store.exports import STOPPED, Exports
from ..errors import DISK_FULL

PROGRESS_EVERY_SECONDS = 0.5  # a row write per report would make a fast export wait on the database
UNEXPECTED = "the export failed unexpectedly; the server's log has the details"

log = logging.getLogger("tunelab.export")


class Stopped(Exception):
    """Raised from the progress report into the export when the server is stopping."""


class ExportRunner:
    def __init__(self, exports: Exports, registry: Registry):
        self.exports = exports
        self.registry = registry
        self._waiting: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, export_id: str, model: str, request: ExportRequest) -> None:
        """Run the export once those before it have finished."""
        with self._lock:
            if self._stopping.is_set():
                self.exports.failed(export_id, "server_stopped", STOPPED)
                return
            self._waiting.put((export_id, model, request))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tunelab-export", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the running export at its next progress report and fail those still waiting."""
        with self._lock:
            self._stopping.set()
            self._waiting.put(None)
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        while (item := self._waiting.get()) is not None:
            export_id = item[0]
            if self._stopping.is_set():
                self.exports.failed(export_id, "server_stopped", STOPPED)
                continue
            try:
                self._run(*item)
            except Exception:  # the database itself failed: the export stays as it was, and the next start fails it
                log.exception("export %s could not be recorded", export_id)

    def _run(self, export_id: str, model: str, request: ExportRequest) -> None:
        if not self.exports.start(export_id):
            return
        last = 0.0

        def progress(fraction: float, stage: str) -> None:
            nonlocal last
            if self._stopping.is_set():
                raise Stopped()
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_SECONDS or fraction >= 1.0:
                last = now
                self.exports.progress(export_id, fraction, stage)

        try:
            files = export_model(self.registry, model, request, self.exports.directory(export_id), progress)
        except Stopped:
            self.exports.failed(export_id, "server_stopped", STOPPED)
        except TunelabError as exc:
            self.exports.failed(export_id, exc.code, exc.message)
        except OSError as exc:
            log.exception("export %s failed", export_id)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.exports.failed(export_id, "disk_full", DISK_FULL)
            else:
                self.exports.failed(export_id, "server_error", UNEXPECTED)
        except Exception:
            log.exception("export %s failed", export_id)
            self.exports.failed(export_id, "server_error", UNEXPECTED)
        else:
            self.exports.succeeded(export_id, [{"name": f.name, "bytes": f.bytes} for f in files])
